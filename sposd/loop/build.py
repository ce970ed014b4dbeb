"""The training run's components, built from the config: ranks, data, prompts, algorithm, engine, learner, logs.

Order matters where the GPU is shared: the vLLM engine claims its share of memory before the learner loads.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sposd import checkpoint as ck
from sposd import dist as sdist
from sposd.config import TrainCfg
from sposd.errors import UserError
from sposd.logging import MetricsLogger, quiet_libraries, redact_secrets, write_atomic
from sposd.loop.evals import HeldoutEval, TrainingEval, heldout_eval
from sposd.loop.metrics import say
from sposd.loop.rollouts import PromptSampler
from sposd.rollout.base import SamplingCfg


def start_ranks(cfg: TrainCfg) -> tuple[int, int]:
    """Join the process group; returns (rank, world) after checking the world is the one the hardware asks for."""
    hw = cfg.hardware
    quiet_libraries(hw.device, verbose=cfg.verbose)
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    rank, world = sdist.init_distributed(hw.device, timeout_min=hw.dist_timeout_min)
    if world != hw.nproc * hw.nodes:
        raise UserError(
            f"{world} ranks were started but hardware.nproc x hardware.nodes = {hw.nproc * hw.nodes}: "
            "launch as many tasks as the hardware config asks for"
        )
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    return rank, world


def resume_point(cfg: TrainCfg, run_dir: Path, *, world: int) -> Path | None:
    """The checkpoint to continue (train.resume), checked against this run; None for a fresh start."""
    try:
        path = ck.resolve_resume(cfg.train.resume, run_dir)
    except FileNotFoundError as e:
        raise UserError(f"train.resume: {e}; use auto, never, or such a path") from e
    if path is None:
        return None
    meta = ck.read_meta(path)
    if meta.get("world") != world:
        raise UserError(
            f"{path} was written by {meta.get('world')} ranks and this run has {world}: resume with the same "
            "hardware (ZeRO-3 shards are per rank), or export it (sposd export) and start from the model"
        )
    if meta["step"] > cfg.num_steps:
        raise UserError(f"{path} is at step {meta['step']}, past num_steps={cfg.num_steps}")
    return path


def load_data(cfg: TrainCfg) -> list[dict]:
    """The training records (errors in files and fields become one-line UserErrors)."""
    from sposd.data.sources import load_records

    d = cfg.data
    try:
        records = load_records(
            kind=d.kind,
            path=d.path,
            hf_id=d.hf_id,
            split=d.split,
            fields=dict(d.fields),
            limit=d.limit,
            seed=cfg.seed,
            max_operand=d.max_operand,
            min_terms=d.min_terms,
            max_terms=d.max_terms,
            **({"solution_style": d.solution_style} if d.kind == "toy" else {}),
        )
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    if not records:
        raise UserError(f"data={d.name} produced no training records")
    return records


def check_reference_solutions(cfg: TrainCfg, records: list[dict]) -> None:
    """Teacher or scoring contexts built from reference solutions need data that has them."""
    from sposd.algos.config import REFERENCE_CONTEXTS

    dcfg, mcfg = cfg.algo.distill, cfg.algo.adv_mod
    needs = [f"algo.distill.context={dcfg.context}"] if dcfg.enabled and dcfg.context in REFERENCE_CONTEXTS else []
    needs += [f"algo.adv_mod.context={mcfg.context}"] if mcfg.needs_solution else []
    if needs and not any(r.get("solution") for r in records):
        if cfg.data.kind == "toy":
            raise UserError(
                f"{needs[0]} needs reference solutions, but data.solution_style={cfg.data.solution_style} has "
                "none; use data.solution_style=own|foreign, or an algo that needs none (grpo, ssopd, uopsd, sdpo)"
            )
        raise UserError(
            f"{needs[0]} needs reference solutions, but data={cfg.data.name} has no "
            "'solution' field (map one with data.fields.solution=<column>)"
        )


@dataclass
class Components:
    """What the loop runs with, and where: `restore` / `save` move the loop's state through checkpoints, `close`
    releases what holds processes or files."""

    cfg: TrainCfg
    run_dir: Path
    rank: int
    world: int
    model_path: str
    tokenizer: Any
    to_prompt: Any  # data record -> the student's rendered Prompt
    sampler: PromptSampler
    algo: Any
    teacher_prompts: Any
    sampling: SamplingCfg
    engine: Any
    colocation: Any  # sposd.rollout.colocation.Colocation: vLLM's sleep / wake sequence around the learner step
    learner: Any
    verifier: Any
    logger: MetricsLogger
    heldout: HeldoutEval | None
    benchmarks: Any  # sposd.loop.evals.TrainingEval (train.eval.every)
    skipped_long_prompts: int = 0  # training records dropped for prompts over model.max_prompt_len (data.long_prompts)

    @property
    def console(self) -> bool:
        return self.rank == 0 and self.cfg.logger.console

    def restore(self, resume: Path | None) -> tuple[ck.TrainState, dict]:
        """The loop's state and the run's summary so far: fresh, or as after the checkpoint `resume`."""
        from sposd.sync.weights import push_weights

        summary: dict = {"run_dir": str(self.run_dir)}
        if self.skipped_long_prompts:
            summary["data/skipped_long_prompts"] = self.skipped_long_prompts
        if resume is None:
            return ck.TrainState(), summary
        state = ck.TrainState.restore(
            resume, learner=self.learner, sampler=self.sampler, algo=self.algo, rank=self.rank
        )
        self.benchmarks.history = state.eval_history  # for the last / best report
        push_weights(self.learner.module, self.engine)  # vLLM samples the next step from the restored policy
        summary["resumed_from"] = str(resume)
        if state.base_accuracy is not None:
            summary["base_accuracy"] = state.base_accuracy
        say(f"resuming from step {state.step} ({resume})", enabled=self.rank == 0)
        return state, summary

    def save(self, state: ck.TrainState) -> Path:
        """Checkpoint `state.step` (every rank: DeepSpeed's save is collective)."""
        cfg = self.cfg
        run_meta = {"world": self.world, "num_steps": cfg.num_steps, "algo": cfg.algo.name, "seed": cfg.seed}
        return state.save(
            self.run_dir,
            learner=self.learner,
            sampler=self.sampler,
            algo=self.algo,
            tokenizer=self.tokenizer,
            run_meta=run_meta,
            keep=cfg.train.checkpoint.keep,
        )

    def close(self, *, close_engine: bool) -> None:
        self.logger.close()
        self.benchmarks.close()
        self.verifier.close()
        if close_engine:
            self.engine.close()


def build(
    cfg: TrainCfg,
    run_dir: Path,
    *,
    rank: int,
    world: int,
    resume: Path | None,
    resolved_config: dict | None = None,
    engine=None,
    learner=None,
) -> Components:
    """Every component of the run; `engine` / `learner` are injected by tests (built from cfg when None)."""
    from sposd.algos import get_algo
    from sposd.data.sources import fit_prompt_lengths
    from sposd.data.templates import make_prompt, stripped_template_ids
    from sposd.models.paths import load_tokenizer, resolve_model_path
    from sposd.rewards import VerifierPool
    from sposd.rollout.colocation import Colocation

    write_config(run_dir, resolved_config, is_main=rank == 0, warnings_=recipe_warnings(cfg))
    model_path = resolve_model_path(cfg.model, data=cfg.data, cache_dir=cfg.cache_dir, rank=rank)
    tokenizer = load_tokenizer(model_path, cfg.model)
    records = load_data(cfg)

    def student_ids(prompt_ids: list[int]) -> list[int]:
        stripped = cfg.algo.student_prompt == "stripped_template"
        return stripped_template_ids(tokenizer, prompt_ids) if stripped else prompt_ids

    student_thinking, _ = thinking_split(cfg)

    def to_prompt(rec: dict):
        prompt = make_prompt(rec, tokenizer, instruction=cfg.data.instruction, enable_thinking=student_thinking)
        prompt.prompt_ids = student_ids(prompt.prompt_ids)
        return prompt

    records, skipped_long = fit_prompt_lengths(  # before any engine loads: a long prompt names its record
        records, lambda r: len(to_prompt(r).prompt_ids), max_len=cfg.model.max_prompt_len,
        policy=cfg.data.long_prompts, where=f"data={cfg.data.name}",
    )  # fmt: skip

    heldout = heldout_eval(cfg, tokenizer, student_ids=student_ids, rank=rank, world=world)
    # benchmarks of train.eval.every (loaded now, so a bad path fails before training); their budget sizes the engine
    benchmarks = TrainingEval(cfg, tokenizer, run_dir, model_path=model_path, rank=rank, world=world)
    algo = get_algo(cfg.algo.name)(cfg.algo, rollout_temperature=cfg.rollout.temperature, seed=cfg.seed)
    check_reference_solutions(cfg, records)
    sampling = SamplingCfg(
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        max_new_tokens=cfg.model.max_new_tokens,
    )
    engine = engine or build_engine(cfg, model_path, rank=rank, max_model_len=benchmarks.max_model_len)
    learner = learner or build_learner(cfg, model_path, algo=algo, tokenizer=tokenizer)
    logger = MetricsLogger(
        run_dir,
        enabled=rank == 0,
        wandb_cfg=asdict(cfg.logger) if cfg.logger.wandb else None,
        config=resolved_config,
        resume_from=ck.read_meta(resume)["step"] if resume else None,
    )
    return Components(
        cfg=cfg,
        run_dir=run_dir,
        rank=rank,
        world=world,
        model_path=model_path,
        tokenizer=tokenizer,
        to_prompt=to_prompt,
        sampler=PromptSampler(records, seed=cfg.seed, rank=rank, world=world),
        algo=algo,
        teacher_prompts=build_teacher_prompts(cfg, tokenizer, model_path=model_path),
        sampling=sampling,
        engine=engine,
        colocation=Colocation(engine, level=cfg.hardware.vllm_sleep_level),
        learner=learner,
        verifier=VerifierPool(),
        logger=logger,
        heldout=heldout,
        benchmarks=benchmarks,
        skipped_long_prompts=skipped_long,
    )


def recipe_warnings(cfg: TrainCfg) -> list[str]:
    """What a recipe's settings mean for this model (an lr too high for a real model trained in full)."""
    from sposd.algos.config import recipe_warnings as warnings_for

    return warnings_for(cfg.algo, model_path=cfg.model.path, lr=cfg.optim.lr, model_name=cfg.model.name,
                        lora_rank=cfg.model.lora.rank)


def write_config(run_dir: Path, resolved_config: dict | None, *, is_main: bool, warnings_: list[str] = ()) -> None:
    """config.yaml (resolved, secrets redacted), with the run's warnings at its top and on the console."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_main:
        return
    for line in warnings_:
        print(f"WARNING: {line}", flush=True)
    if resolved_config is not None:
        import yaml

        head = "".join(f"# WARNING: {line}\n" for line in warnings_)
        write_atomic(run_dir / "config.yaml", head + yaml.safe_dump(redact_secrets(resolved_config), sort_keys=False))


def thinking_split(cfg: TrainCfg) -> tuple[bool, bool]:
    """(student thinks, teacher thinks): a recipe's thinking split applies to a thinking model
    (model.enable_thinking); a model without one ignores it."""
    thinking_model, dcfg, st = cfg.model.enable_thinking, cfg.algo.distill, cfg.algo.student_thinking
    student = thinking_model if st is None else st and thinking_model
    teacher = student if dcfg.teacher_thinking is None else dcfg.teacher_thinking and thinking_model
    return student, teacher


def build_teacher_prompts(cfg: TrainCfg, tokenizer, *, model_path: str):
    from sposd.data.teacher import TeacherPrompts
    from sposd.models.paths import context_length

    dcfg = cfg.algo.distill
    student_thinking, teacher_thinking = thinking_split(cfg)
    return TeacherPrompts(
        tokenizer,
        instruction=cfg.data.instruction,
        enable_thinking=teacher_thinking,
        open_think=dcfg.think_boundary == "open_think" and teacher_thinking and not student_thinking,
        wrapper=dcfg.wrapper,
        # the teacher context may hold a witness as long as a completion
        max_len=cfg.model.max_teacher_prompt_len or cfg.model.max_prompt_len + cfg.model.max_new_tokens,
        # [context | completion] must stay within the model's positions (refused and counted as too long otherwise)
        max_positions=context_length(model_path, trust_remote_code=cfg.model.trust_remote_code),
        reveal_min=dcfg.partial.reveal_min,
        reveal_direction=dcfg.partial.reveal_direction,
        overlap_metric=dcfg.partial.overlap,
        reveal_unit=dcfg.partial.unit,
        hidden_marker=dcfg.partial.hidden_marker,
    )


def build_engine(cfg: TrainCfg, model_path: str, *, rank: int, max_model_len: int):
    """This rank's in-process vLLM engine, long enough for rollouts and for the benchmarks of train.eval.every."""
    from sposd.rollout.vllm_engine import VLLMEngine

    return VLLMEngine.from_config(
        model_path,
        cfg.model,
        cfg.hardware,
        max_model_len=max(cfg.model.max_prompt_len + cfg.model.max_new_tokens, max_model_len),
        seed=cfg.seed * 1000 + rank,
    )


def build_learner(cfg: TrainCfg, model_path: str, *, algo, tokenizer):
    from sposd.learner.learner import DeepSpeedLearner

    hw = cfg.hardware
    return DeepSpeedLearner(
        model_path,
        algo=algo,
        optim=cfg.optim,
        total_steps=cfg.num_steps * cfg.algo.ppo_epochs * cfg.algo.num_minibatches,
        device=hw.device,
        dtype=cfg.model.dtype,
        zero_stage=hw.zero_stage,
        micro_batch_tokens=hw.micro_batch_tokens,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        loss_temperature=cfg.rollout.temperature,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        trust_remote_code=cfg.model.trust_remote_code,
        offload_optimizer=hw.offload_optimizer,
        offload_params=hw.offload_params,
        fp32_grad_accum=hw.fp32_grad_accum,
        rollout_top_k=cfg.rollout.top_k,
        rollout_top_p=cfg.rollout.top_p,
        lora=cfg.model.lora,
        share_prompts=hw.share_prompts,
    )
