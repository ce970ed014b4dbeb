"""`sposd train`: the RL / self-distillation loop, read top to bottom.

    prompts -> vLLM group rollouts -> math-verify rewards -> algorithm (advantages, filters)
            -> DeepSpeed learner step -> stream weights into vLLM -> log

Every rank runs this same loop on its own share of the prompts, with its own in-process vLLM engine; the
learner's ZeRO-3 collectives and a few scalar all-reduces keep the ranks in step.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sposd import checkpoint as ck
from sposd import dist as sdist
from sposd.config import TrainCfg
from sposd.errors import UserError
from sposd.learner.batching import LearnerSample
from sposd.logging import MetricsLogger, redact_secrets, write_atomic, write_jsonl
from sposd.rollout.base import SamplingCfg
from sposd.types import RolloutGroup


# ---- setup helpers ---------------------------------------------------------------------------------------
def load_data(cfg: TrainCfg) -> tuple[list[dict], list[dict]]:
    """Training records and held-out records (held-out only for the toy task)."""
    from sposd.data.sources import load_records

    d = cfg.data
    try:
        train = load_records(
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
        )
        heldout = []
        if d.kind == "toy" and cfg.heldout_eval:
            heldout = load_records(
                kind="toy",
                split="heldout",
                limit=d.num_heldout,
                seed=cfg.seed,
                max_operand=d.max_operand,
                min_terms=d.min_terms,
                max_terms=d.max_terms,
            )
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    if not train:
        raise UserError(f"data={d.name} produced no training records")
    return train, heldout


class PromptSampler:
    """Endless shuffled pass over the records; each rank takes every world-th prompt of each batch."""

    def __init__(self, records: list[dict], *, seed: int, rank: int, world: int):
        self.records, self.rng, self.rank, self.world = records, random.Random(seed), rank, world
        self.order: list[int] = []

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "num_records": len(self.records)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_records"] != len(self.records):
            raise UserError(
                f"the checkpoint was taken on {state['num_records']} training records, this data has "
                f"{len(self.records)}: resume with the same data (or train.resume=never)"
            )
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])

    def next(self, n: int) -> list[dict]:
        batch = []
        while len(batch) < n:
            if not self.order:
                self.order = list(range(len(self.records)))
                self.rng.shuffle(self.order)
            batch.append(self.records[self.order.pop()])
        return batch[self.rank :: self.world]


def grade(groups: list[RolloutGroup], verifier) -> None:
    """Set Completion.correct from the verifier (one pooled call for the whole batch)."""
    pairs = [(c.text, g.prompt.answer) for g in groups for c in g.completions]
    verdicts = verifier.grade(pairs) if pairs else []
    it = iter(verdicts)
    for g in groups:
        for c in g.completions:
            c.correct = bool(next(it))


def heldout_accuracy(engine, prompts, verifier, *, n: int, sampling: SamplingCfg) -> float:
    """Sampled accuracy (n samples per held-out problem), averaged over all ranks' shares."""
    groups = engine.generate(prompts, n=n, sampling=sampling)
    grade(groups, verifier)
    correct = sum(c.correct for g in groups for c in g.completions)
    total = sum(len(g.completions) for g in groups)
    c, t = sdist.all_reduce([correct, total])
    return c / max(t, 1)


def _step_seed(seed: int, step: int, round_: int, rank: int) -> int:
    """A 63-bit seed for one generate call, distinct for every (seed, step, round, rank)."""
    import hashlib

    h = hashlib.blake2b(f"{seed}:{step}:{round_}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


# ---- checkpoints ---------------------------------------------------------------------------------------------
def _resume_point(cfg: TrainCfg, run_dir: Path, *, world: int) -> tuple[Path | None, dict | None]:
    """The checkpoint to continue (train.resume) and its meta, checked against this run; (None, None) if none."""
    try:
        path = ck.resolve_resume(cfg.train.resume, run_dir)
    except FileNotFoundError as e:
        raise UserError(f"train.resume: {e}; use auto, never, or such a path") from e
    if path is None:
        return None, None
    meta = ck.read_meta(path)
    if meta.get("world") != world:
        raise UserError(
            f"{path} was written by {meta.get('world')} ranks and this run has {world}: resume with the same "
            "hardware (ZeRO-3 shards are per rank), or export it (sposd export) and start from the model"
        )
    if meta["step"] > cfg.num_steps:
        raise UserError(f"{path} is at step {meta['step']}, past num_steps={cfg.num_steps}")
    return path, meta


def _save_checkpoint(
    run_dir: Path,
    step: int,
    cfg: TrainCfg,
    *,
    learner,
    sampler,
    algo,
    loop_state: dict,
    tokenizer,
    summary,
    world,
    eval_history,
) -> Path:
    """Every rank: its DeepSpeed shards, RNG, sampler, algorithm (controllers) and loop state; rank 0 the model
    files and meta; then commit."""
    root = ck.checkpoint_root(run_dir)
    tmp = ck.begin(root, step)
    learner.save_state(tmp)
    rank_state = {"rng": _rng_state(), "sampler": sampler.state_dict(), "algo": algo.state_dict(), "loop": loop_state}
    torch.save(rank_state, tmp / f"rank_{sdist.rank():05d}.pt")
    ck.save_model_files(tmp, learner.module.config, tokenizer=tokenizer)
    ck.fault_pause()
    meta = {"world": world, "num_steps": cfg.num_steps, "algo": cfg.algo.name, "seed": cfg.seed}
    meta["eval_history"] = eval_history
    if "base_accuracy" in summary:
        meta["base_accuracy"] = summary["base_accuracy"]
    return ck.commit(root, tmp, step, meta, keep=cfg.train.checkpoint.keep)


def _restore(path: Path, meta: dict, *, learner, sampler, algo, rank: int) -> tuple[int, dict]:
    """Load a checkpoint into this rank's learner, sampler, algorithm and RNGs; returns its step and loop state."""
    learner.load_state(path)
    state = torch.load(path / f"rank_{rank:05d}.pt", map_location="cpu", weights_only=False)
    sampler.load_state_dict(state["sampler"])
    algo.load_state_dict(state.get("algo", {}))
    _set_rng_state(state["rng"])
    return int(meta["step"]), dict(state.get("loop", {}))


def _rng_state() -> dict:
    import numpy as np

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the loop ----------------------------------------------------------------------------------------------
def _quiet_libraries(device: str) -> None:
    """Keep the console for the progress bar: silence per-step deprecation chatter and loader bars."""
    import warnings

    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it found no GPU
    for msg in (".*reduce_scatter_tensor.*", ".*all_gather_into_tensor.*", ".*reduce_op.*", ".*_get_vllm_tracer.*"):
        warnings.filterwarnings("ignore", message=msg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def train(
    cfg: TrainCfg,
    run_dir: Path,
    *,
    resolved_config: dict | None = None,
    engine=None,
    learner=None,
    sync_engine_first: bool = False,
    close_engine: bool = True,
) -> dict:
    """Run `cfg.num_steps` RL steps; returns a summary (base / trained held-out accuracy, final path).

    Args:
        cfg: the validated config.
        run_dir: where the run-directory contract is written.
        resolved_config: the resolved config as a plain dict, saved as config.yaml.
        engine, learner: injected components (unit tests use a scripted engine); built from cfg when None.
        sync_engine_first: push the learner's weights into the engine before the first rollout (an injected engine
            reused from another run holds that run's weights).
        close_engine: close the engine at the end (false keeps an injected engine alive for the next run).
    """
    from sposd.algos import get_algo
    from sposd.algos.config import REFERENCE_CONTEXTS
    from sposd.data.teacher import TeacherPrompts
    from sposd.data.templates import make_prompt, stripped_template_ids
    from sposd.evaluate import TrainingEval
    from sposd.learner.learner import DeepSpeedLearner
    from sposd.models.paths import load_tokenizer, resolve_model_path
    from sposd.rewards import VerifierPool
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.sync.weights import push_weights

    hw = cfg.hardware
    _quiet_libraries(hw.device)
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    rank, world = sdist.init_distributed(hw.device)
    is_main = rank == 0
    if world != hw.nproc * hw.nodes:
        raise UserError(
            f"{world} ranks were started but hardware.nproc x hardware.nodes = {hw.nproc * hw.nodes}: "
            "launch as many tasks as the hardware config asks for"
        )
    resume, meta = _resume_point(cfg, run_dir, world=world)
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main and resolved_config is not None:
        import yaml

        write_atomic(run_dir / "config.yaml", yaml.safe_dump(redact_secrets(resolved_config), sort_keys=False))

    model_path = resolve_model_path(cfg.model, data=cfg.data, cache_dir=cfg.cache_dir, rank=rank)
    tokenizer = load_tokenizer(model_path, cfg.model)
    train_records, heldout_records = load_data(cfg)
    # benchmarks of train.eval.every (loaded now, so a bad path fails before training); their budget sizes the engine
    periodic_eval = TrainingEval(cfg, tokenizer, run_dir, model_path=model_path, rank=rank, world=world)

    def to_prompt(rec: dict):
        prompt = make_prompt(
            rec, tokenizer, instruction=cfg.data.instruction, enable_thinking=cfg.model.enable_thinking
        )
        if cfg.algo.student_prompt == "stripped_template":
            prompt.prompt_ids = stripped_template_ids(tokenizer, prompt.prompt_ids)
        return prompt

    algo = get_algo(cfg.algo.name)(cfg.algo, rollout_temperature=cfg.rollout.temperature, seed=cfg.seed)
    dcfg, mcfg = cfg.algo.distill, cfg.algo.adv_mod
    needs_solution = (
        [f"algo.distill.context={dcfg.context}"] if dcfg.enabled and dcfg.context in REFERENCE_CONTEXTS else []
    )
    needs_solution += (
        [f"algo.adv_mod.context={mcfg.context}"] if mcfg.scores and mcfg.context == "reference_solution" else []
    )
    if needs_solution and not any(r.get("solution") for r in train_records):
        raise UserError(
            f"{needs_solution[0]} needs reference solutions, but data={cfg.data.name} has no "
            "'solution' field (map one with data.fields.solution=<column>)"
        )
    teacher_prompts = TeacherPrompts(
        tokenizer,
        instruction=cfg.data.instruction,
        enable_thinking=cfg.model.enable_thinking,
        wrapper=dcfg.wrapper,
        # the teacher context may hold a witness as long as a completion
        max_len=cfg.model.max_teacher_prompt_len or cfg.model.max_prompt_len + cfg.model.max_new_tokens,
        reveal_min=dcfg.reveal_min,
        reveal_direction=dcfg.reveal_direction,
        overlap_metric=dcfg.overlap,
        reveal_unit=dcfg.reveal_unit,
        hidden_marker=dcfg.hidden_marker,
    )
    max_new = cfg.model.max_new_tokens
    sampling = SamplingCfg(
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, max_new_tokens=max_new
    )

    def reseed(step: int, round_: int) -> None:
        """Reseed this process's torch RNG from (seed, step, generation round, rank; rounds -1 / -2 = held-out /
        benchmark evaluation) before sampling. The in-process vLLM engine samples from it, so a resumed run draws
        exactly what the uninterrupted run would have. (Per-request vLLM seeds would do this without touching the
        global RNG, but vLLM's CPU build cannot rewind a CPU generator when it discards a partial-prefill token.)"""
        torch.manual_seed(_step_seed(cfg.seed, step, round_, rank))

    engine = engine or VLLMEngine.from_config(
        model_path,
        cfg.model,
        hw,
        max_model_len=max(cfg.model.max_prompt_len + max_new, periodic_eval.max_model_len),
        seed=cfg.seed * 1000 + rank,
    )
    learner = learner or DeepSpeedLearner(
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
    )
    verifier = VerifierPool()
    logger = MetricsLogger(
        run_dir,
        enabled=is_main,
        wandb_cfg=asdict(cfg.logger) if cfg.logger.wandb else None,
        config=resolved_config,
        resume_from=meta["step"] if meta else None,
    )
    sampler = PromptSampler(train_records, seed=cfg.seed, rank=rank, world=world)
    heldout_prompts = [to_prompt(r) for r in heldout_records[rank::world]]
    summary: dict = {"run_dir": str(run_dir)}
    start, loop_state = 0, {}
    if resume is not None:  # optimizer, schedule, teacher, controllers, sampler and RNG as after step `start`
        start, loop_state = _restore(resume, meta, learner=learner, sampler=sampler, algo=algo, rank=rank)
        periodic_eval.history = list(meta.get("eval_history", []))  # for the last / best report
        push_weights(learner.module, engine)  # vLLM samples step start + 1 from the restored policy
        summary["resumed_from"] = str(resume)
        if "base_accuracy" in meta:
            summary["base_accuracy"] = meta["base_accuracy"]
    stop = ck.StopSignals(cfg.train.checkpoint.signals).install()

    # mean response length at step 1: response/len_reduction is relative to it (kept across a resume)
    first_len: float | None = loop_state.get("first_len")

    try:
        if sync_engine_first and resume is None:  # an injected engine holds another run's weights
            push_weights(learner.module, engine)
        if heldout_records and "base_accuracy" not in summary:
            reseed(0, -1)
            summary["base_accuracy"] = heldout_accuracy(
                engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling
            )
        bar = _progress(cfg.num_steps, start, enabled=is_main and cfg.logger.console)
        ckpt_s = None
        for step in range(start + 1, cfg.num_steps + 1):
            t_step, cpu_step = time.perf_counter(), time.process_time()
            algo_m = algo.begin_step(step, cfg.num_steps)

            # 1. rollouts: G completions per prompt from the current weights (+ DAPO-style refills)
            t0 = time.perf_counter()
            kept: list[RolloutGroup] = []
            all_groups: list[RolloutGroup] = []
            t_verify = 0.0
            for round_ in range(cfg.algo.max_gen_batches if cfg.algo.dynamic_sampling else 1):
                reseed(step, round_)
                groups = engine.generate(
                    [to_prompt(r) for r in sampler.next(cfg.prompts_per_step)], n=cfg.algo.group_size, sampling=sampling
                )
                tv = time.perf_counter()
                grade(groups, verifier)  # 2. verify
                t_verify += time.perf_counter() - tv
                algo.shape_rewards(groups, max_new_tokens=max_new)
                all_groups += groups
                kept += algo.filter_groups(groups)  # 3. keep informative groups
                if len(kept) * world >= cfg.prompts_per_step:
                    break
            kept = kept[: max(1, cfg.prompts_per_step // world)] if kept else []
            t_rollout = time.perf_counter() - t0 - t_verify

            # 4. algorithm: advantages, per-sample loss weights and teacher contexts -> learner samples
            advs, weights = algo.advantages(kept), algo.loss_mask_weight(kept)
            requests = algo.distill_requests(kept, cut_reference=teacher_prompts.cut_reference)
            scoring = algo.score_requests(kept)
            comps = [(g, c) for g in kept for c in g.completions]
            samples, too_long, score_fallback = [], 0, 0
            for (g, c), a, w, req, ctxs in zip(comps, advs, weights, requests, scoring, strict=True):
                s = LearnerSample(
                    prompt_ids=g.prompt.prompt_ids,
                    completion_ids=c.token_ids,
                    adv=a,
                    loss_weight=w,
                    rollout_logprobs=c.logprobs,
                )
                if req is not None:
                    ids = teacher_prompts.render_context(g.prompt, req.context)
                    if ids is None:
                        too_long += 1
                    else:
                        s.teacher_prompt_ids, s.distill_weight = ids, req.weight
                        s.distill_len, s.distill_units = req.num_positions, req.units
                if algo.num_score_contexts:  # a context that is missing or too long: the student's own prompt
                    ids = (
                        [teacher_prompts.render_context(g.prompt, x) for x in ctxs]
                        if ctxs is not None
                        else [None] * algo.num_score_contexts
                    )
                    score_fallback += any(x is None for x in ids)
                    s.score_prompt_ids = [x if x is not None else g.prompt.prompt_ids for x in ids]
                s.loss_weight = algo.rl_loss_weight(s.loss_weight, distilled=s.distilled)  # SRPO's routing
                samples.append(s)

            # 5. learner step (DeepSpeed ZeRO-3)
            t0 = time.perf_counter()
            engine.sleep()
            learn_m = learner.train_step(samples, max_len=max_new)
            t_learn = time.perf_counter() - t0

            # 6. weight sync: vLLM must sample the next batch from the weights just trained
            t0 = time.perf_counter()
            engine.wake_up()
            sync_m = push_weights(learner.module, engine)
            t_sync = time.perf_counter() - t0

            # 7. log (and let the algorithm's controllers see the step)
            metrics = {**_rollout_metrics(all_groups, kept, max_new), **learn_m, **sync_m, **algo_m}
            first_len = first_len if first_len is not None else metrics["response/mean_len"]
            metrics["response/len_reduction"] = 1.0 - metrics["response/mean_len"] / max(first_len, 1e-9)
            if cfg.algo.distill.enabled:
                metrics.update(_distill_metrics(algo.distill_stats, too_long, teacher_prompts, learn_m))
            if ckpt_s is not None:  # the previous checkpoint's write, logged once, with the step after it
                metrics["time/checkpoint_s"], ckpt_s = ckpt_s, None
            if algo.num_score_contexts:
                metrics["score/fallback"] = sdist.all_reduce([score_fallback])[0]
            metrics.update(algo.end_step(step, metrics))
            metrics.update(
                {
                    "time/rollout_s": t_rollout,
                    "time/verify_s": t_verify,
                    "time/learn_s": t_learn,
                    "time/sync_s": t_sync,
                    "time/step_s": time.perf_counter() - t_step,
                    # this process's CPU seconds (all its threads; vLLM runs in-process): a cost that other jobs on
                    # a shared machine inflate far less than wall time
                    "time/step_cpu_s": time.process_time() - cpu_step,
                }
            )
            if heldout_records and cfg.heldout_every and step % cfg.heldout_every == 0:
                reseed(step, -1)
                acc = heldout_accuracy(engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling)
                metrics["eval/heldout_accuracy"] = acc
                if step == cfg.num_steps:
                    summary["trained_accuracy"] = acc
            if periodic_eval.due(step):  # every train.eval.every steps and at the end
                reseed(step, -2)
                metrics.update(periodic_eval(step, engine, verifier))
            logger.log(step, metrics)
            if cfg.save_samples_every and (step % cfg.save_samples_every == 0 or step == 1):
                _save_samples(run_dir, step, kept or all_groups, advs if kept else None, is_main=is_main)
            if bar is not None:
                bar.set_postfix(
                    reward=f"{metrics['reward/mean']:.3f}",
                    loss=f"{metrics.get('loss/total', 0):.4f}",
                    step_s=f"{metrics['time/step_s']:.2f}",
                )
                bar.update(1)

            # 8. checkpoint (after the log line, so a resumed run never misses a step's metrics); a stop signal
            # (SLURM preemption, Ctrl-C) ends the run here with a checkpoint
            stopping = stop.requested()
            every = cfg.train.checkpoint.every
            if stopping or (every and step % every == 0) or (step == cfg.num_steps and cfg.train.checkpoint.on_exit):
                t0 = time.perf_counter()
                _save_checkpoint(
                    run_dir,
                    step,
                    cfg,
                    learner=learner,
                    sampler=sampler,
                    algo=algo,
                    loop_state={"first_len": first_len},
                    tokenizer=tokenizer,
                    summary=summary,
                    world=world,
                    eval_history=periodic_eval.history,
                )
                ckpt_s = time.perf_counter() - t0
                summary["last_checkpoint_s"] = ckpt_s
            if stopping:
                summary["stopped"] = {"signal": stopping, "step": step}
                if cfg.train.checkpoint.requeue:
                    summary["stopped"]["requeue"] = ck.requeue_slurm_job()
                break
        if bar is not None:
            bar.close()
        if "stopped" in summary:  # interrupted: no final evaluation or export; the checkpoint has everything
            if is_main:
                write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            return summary

        if heldout_records and "trained_accuracy" not in summary:
            reseed(cfg.num_steps, -1)
            summary["trained_accuracy"] = heldout_accuracy(
                engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling
            )
        if (report := periodic_eval.report()) is not None:
            summary["eval"] = report  # the last and the best evaluation, each with its step
        if cfg.save_final:
            final = learner.save_hf(run_dir / "final", tokenizer=tokenizer)
            if final is not None:
                summary["final"] = str(final)
        if is_main:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    finally:
        stop.restore()
        logger.close()
        periodic_eval.close()
        verifier.close()
        if close_engine:
            engine.close()
    return summary


def _progress(total: int, done: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True)


def _rollout_metrics(all_groups: list[RolloutGroup], kept: list[RolloutGroup], max_new: int) -> dict[str, float]:
    """Batch statistics summed over ranks (then divided), so every rank logs the same global numbers."""
    comps = [c for g in all_groups for c in g.completions]
    kcomps = [c for g in kept for c in g.completions]
    sums = sdist.all_reduce(
        [
            sum(c.reward for c in kcomps),
            len(kcomps),
            sum(c.correct for c in comps),
            len(comps),
            sum(len(c.token_ids) for c in comps),
            sum(c.truncated for c in comps),
            sum(g.is_mixed for g in all_groups),
            len(all_groups),
            len(kept),
        ]
    )
    r, nk, acc, n, toks, trunc, mixed, ng, nkept = sums
    return {
        "reward/mean": r / max(nk, 1),
        "reward/accuracy": acc / max(n, 1),
        "response/mean_len": toks / max(n, 1),
        "response/trunc_frac": trunc / max(n, 1),
        "groups/mixed_frac": mixed / max(ng, 1),
        "groups/kept": nkept,
        "groups/generated": ng,
    }


def _distill_metrics(stats: dict[str, float], too_long: int, teacher_prompts, learn_m: dict) -> dict[str, float]:
    """Teacher-target counts summed over ranks, and per-token means of the learner's distillation sums."""
    rho = teacher_prompts.last_rho
    keys = sorted(stats)
    sums = sdist.all_reduce([stats[k] for k in keys] + [too_long, sum(rho), len(rho)])
    teacher_prompts.last_rho = []
    out = dict(zip(keys, sums[: len(keys)], strict=True))
    out["distill/skipped_too_long"] = sums[-3]
    if sums[-1]:
        out["distill/reveal_ratio"] = sums[-2] / sums[-1]
    groups = out.pop("distill/groups", 0.0)
    out["distill/prompt_weight_mean"] = out.pop("distill/prompt_weight_sum", 0.0) / max(groups, 1.0)
    out["distill/groups"] = groups
    tokens = learn_m.get("distill/tokens", 0.0)
    if tokens:
        out["distill/div_mean"] = learn_m.get("distill/div_sum", 0.0) / tokens
    return out


def _save_samples(run_dir: Path, step: int, groups: list[RolloutGroup], advs, *, is_main: bool) -> None:
    rows = []
    it = iter(advs) if advs is not None else None
    for g in groups:
        for c in g.completions:
            rows.append(
                {
                    "step": step,
                    "id": g.prompt.id,
                    "problem": g.prompt.problem,
                    "answer": g.prompt.answer,
                    "completion": c.text,
                    "reward": c.reward,
                    "correct": c.correct,
                    "truncated": c.truncated,
                    "num_tokens": len(c.token_ids),
                    "advantage": next(it) if it is not None else None,
                }
            )
    gathered = sdist.all_gather_objects(rows)
    if is_main:
        write_jsonl(run_dir / "samples" / f"step_{step}.jsonl", [r for part in gathered for r in part])
