"""What a step logs: batch statistics summed over ranks, distillation counts, timings, the progress bar, samples.

Every function that all-reduces must be called by every rank at the same point of the step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from sposd import dist as sdist
from sposd.logging import write_jsonl
from sposd.types import RolloutGroup


class StepClock:
    """Wall and CPU seconds of one step, and of its phases."""

    def __init__(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        """The block's seconds go to `time/<name>_s`."""
        t0 = time.perf_counter()
        yield
        self.phases[f"time/{name}_s"] = time.perf_counter() - t0

    def metrics(self, rollouts) -> dict[str, float]:
        return {
            "time/rollout_s": rollouts.rollout_s,
            "time/verify_s": rollouts.verify_s,
            **self.phases,
            "time/step_s": time.perf_counter() - self.t0,
            # this process's CPU seconds (all its threads; vLLM runs in-process): a cost that other jobs on a shared
            # machine inflate far less than wall time
            "time/step_cpu_s": time.process_time() - self.cpu0,
        }


def step_metrics(c, state, rollouts, batch, step_m: dict, *, checkpoint_s: float | None) -> dict[str, float]:
    """The step's metrics before the algorithm's `end_step` (its controllers see these); sets `state.first_len`.

    Args:
        step_m: the learner's, the weight sync's and the algorithm's own metrics of the step.
        checkpoint_s: the previous checkpoint's write time (logged once, with the step after it).
    """
    metrics = {**rollout_metrics(rollouts.generated, rollouts.kept), **step_m}
    if state.first_len is None:  # response/len_reduction is relative to the mean length at step 1
        state.first_len = metrics["response/mean_len"]
    metrics["response/len_reduction"] = 1.0 - metrics["response/mean_len"] / max(state.first_len, 1e-9)
    if c.cfg.algo.distill.enabled:
        metrics.update(distill_metrics(c.algo.distill_stats, batch.too_long, c.teacher_prompts, step_m))
    if checkpoint_s is not None:
        metrics["time/checkpoint_s"] = checkpoint_s
    if c.algo.num_score_contexts:
        metrics["score/fallback"] = sdist.all_reduce([batch.score_fallback])[0]
    return metrics


def rollout_metrics(all_groups: list[RolloutGroup], kept: list[RolloutGroup]) -> dict[str, float]:
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


def distill_metrics(stats: dict[str, float], too_long: int, teacher_prompts, learn_m: dict) -> dict[str, float]:
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
    loops, n = out.pop("distill/loop_completions", 0.0), out.pop("distill/completions", 0.0)
    out["distill/loop_rate"] = loops / max(n, 1.0)  # completions ending in a repetition loop
    tokens = learn_m.get("distill/tokens", 0.0)
    if tokens:  # per distilled token: div_mean, clipped(_tokens)_mean, teacher / student_entropy_mean
        for key, value in learn_m.items():
            if key.startswith("distill/") and key.endswith("_sum"):
                out[key.removesuffix("_sum") + "_mean"] = value / tokens
    return out


def progress_bar(total: int, done: int, *, enabled: bool, desc: str = "train", unit: str = "step", leave=True):
    """A tqdm bar on the console (None when disabled: other ranks, or logger.console=false)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)


def show_step(bar, metrics: dict) -> None:
    if bar is not None:
        bar.set_postfix(
            reward=f"{metrics['reward/mean']:.3f}",
            loss=f"{metrics.get('loss/total', 0):.4f}",
            step_s=f"{metrics['time/step_s']:.2f}",
        )
        bar.update(1)


def say(msg: str, *, enabled: bool) -> None:
    """One line on the console that does not break a progress bar."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(msg)


def save_samples(c, step: int, rollouts, batch) -> None:
    """samples/step_N.jsonl: every rank's completions of the step with their rewards and advantages (the kept
    groups', or when none was kept, all that were generated, without advantages)."""
    groups, advs = (rollouts.kept, batch.advs) if rollouts.kept else (rollouts.generated, None)
    rows = []
    it = iter(advs) if advs is not None else None
    for g in groups:
        for comp in g.completions:
            rows.append(
                {
                    "step": step,
                    "id": g.prompt.id,
                    "problem": g.prompt.problem,
                    "answer": g.prompt.answer,
                    "completion": comp.text,
                    "reward": comp.reward,
                    "correct": comp.correct,
                    "truncated": comp.truncated,
                    "num_tokens": len(comp.token_ids),
                    "advantage": next(it) if it is not None else None,
                }
            )
    gathered = sdist.all_gather_objects(rows)
    if c.rank == 0:
        write_jsonl(c.run_dir / "samples" / f"step_{step}.jsonl", [r for part in gathered for r in part])
