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

from sposd import dist as sdist
from sposd.config import TrainCfg
from sposd.learner.batching import LearnerSample
from sposd.logging import MetricsLogger, redact_secrets, write_atomic, write_jsonl
from sposd.rollout.base import SamplingCfg
from sposd.types import RolloutGroup


class UserError(ValueError):
    """A problem the user can fix (bad path, malformed data): reported as one line, no stack trace."""


# ---- setup helpers ---------------------------------------------------------------------------------------
def resolve_model_path(cfg: TrainCfg, *, rank: int) -> str:
    """'builtin' -> build + warm-start (cached) the embedded tiny model; a local dir must exist; else a hub id."""
    m = cfg.model
    if m.path == "builtin":
        from sposd.models.warmstart import ensure_toy_model

        cache = Path(cfg.cache_dir).expanduser() / "toy_models"
        b, d = m.builtin, cfg.data
        knobs = dict(
            hidden_size=b.hidden_size,
            num_layers=b.num_layers,
            num_heads=b.num_heads,
            num_kv_heads=b.num_kv_heads,
            intermediate_size=b.intermediate_size,
            steps=b.warmstart_steps,
            lr=b.warmstart_lr,
            batch_size=b.warmstart_batch_size,
            privileged_frac=b.privileged_frac,
            seed=b.seed,
            max_operand=d.max_operand,
            min_terms=d.min_terms,
            max_terms=d.max_terms,
        )
        if rank == 0:
            path = ensure_toy_model(cache, **knobs)
        sdist.barrier()
        if rank != 0:
            path = ensure_toy_model(cache, **knobs)  # cache hit: rank 0 just built it
        return str(path)
    p = Path(m.path).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(f"model.path={m.path!r} is a directory without config.json (not a Hugging Face model)")
        return str(p)
    if m.path.startswith((".", "/", "~")) or m.path.count("/") != 1:
        raise UserError(f"model.path={m.path!r} does not exist (give a local HF-format dir or a hub id owner/name)")
    return m.path


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


# ---- the loop ----------------------------------------------------------------------------------------------
def _quiet_libraries(device: str) -> None:
    """Keep the console for the progress bar: silence per-step deprecation chatter and loader bars."""
    import warnings

    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed warns that it found no GPU
    for msg in (".*reduce_scatter_tensor.*", ".*reduce_op.*", ".*_get_vllm_tracer.*"):
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
    from transformers import AutoTokenizer

    from sposd.algos import get_algo
    from sposd.algos.config import REFERENCE_CONTEXTS
    from sposd.data.teacher import TeacherPrompts
    from sposd.data.templates import make_prompt, stripped_template_ids
    from sposd.learner.engine import DeepSpeedLearner
    from sposd.rewards import VerifierPool
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.sync.weights import push_weights

    hw = cfg.hardware
    _quiet_libraries(hw.device)
    if hw.num_threads:
        torch.set_num_threads(hw.num_threads)
    rank, world = sdist.init_distributed(hw.device)
    is_main = rank == 0
    random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main and resolved_config is not None:
        import yaml

        write_atomic(run_dir / "config.yaml", yaml.safe_dump(redact_secrets(resolved_config), sort_keys=False))

    model_path = resolve_model_path(cfg, rank=rank)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError as e:
        raise UserError(f"model.path={cfg.model.path!r}: cannot load a tokenizer ({e})") from e
    train_records, heldout_records = load_data(cfg)

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
    engine = engine or VLLMEngine(
        model_path,
        dtype=cfg.model.dtype,
        max_model_len=cfg.model.max_prompt_len + max_new,
        seed=cfg.seed * 1000 + rank,
        device=hw.device,
        kv_cache_gb=hw.vllm_kv_cache_gb,
        gpu_memory_utilization=hw.vllm_gpu_memory_utilization,
        enforce_eager=hw.vllm_enforce_eager,
        tensor_parallel_size=hw.vllm_tp,
        enable_sleep_mode=hw.vllm_sleep,
        trust_remote_code=cfg.model.trust_remote_code,
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
    )
    verifier = VerifierPool()
    logger = MetricsLogger(
        run_dir, enabled=is_main, wandb_cfg=asdict(cfg.logger) if cfg.logger.wandb else None, config=resolved_config
    )
    sampler = PromptSampler(train_records, seed=cfg.seed, rank=rank, world=world)
    heldout_prompts = [to_prompt(r) for r in heldout_records[rank::world]]
    summary: dict = {"run_dir": str(run_dir)}

    first_len: float | None = None  # mean response length at step 1 (response/len_reduction is relative to it)

    try:
        if sync_engine_first:
            push_weights(learner.module, engine)
        if heldout_prompts:
            summary["base_accuracy"] = heldout_accuracy(
                engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling
            )
        bar = _progress(cfg.num_steps, enabled=is_main and cfg.logger.console)
        for step in range(1, cfg.num_steps + 1):
            t_step, cpu_step = time.perf_counter(), time.process_time()
            algo_m = algo.begin_step(step, cfg.num_steps)

            # 1. rollouts: G completions per prompt from the current weights (+ DAPO-style refills)
            t0 = time.perf_counter()
            kept: list[RolloutGroup] = []
            all_groups: list[RolloutGroup] = []
            t_verify = 0.0
            for _ in range(cfg.algo.max_gen_batches if cfg.algo.dynamic_sampling else 1):
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
            if heldout_prompts and cfg.heldout_every and step % cfg.heldout_every == 0:
                acc = heldout_accuracy(engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling)
                metrics["eval/heldout_accuracy"] = acc
                if step == cfg.num_steps:
                    summary["trained_accuracy"] = acc
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
        if bar is not None:
            bar.close()

        if heldout_prompts and "trained_accuracy" not in summary:
            summary["trained_accuracy"] = heldout_accuracy(
                engine, heldout_prompts, verifier, n=cfg.heldout_samples, sampling=sampling
            )
        if cfg.save_final:
            final = learner.save_hf(run_dir / "final", tokenizer=tokenizer)
            if final is not None:
                summary["final"] = str(final)
        if is_main:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    finally:
        logger.close()
        verifier.close()
        if close_engine:
            engine.close()
    return summary


def _progress(total: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)


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
