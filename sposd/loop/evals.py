"""Evaluations during training: the held-out accuracy (the toy benchmark's evaluation) and `train.eval.every`.

The held-out accuracy is `sposd eval`'s path (`load_benchmark` + `sample_and_grade`) on the `toy` benchmark, with
what makes it the training task's held-out score: the student's prompt as in training, the rollout sampling,
`heldout_samples` samples per problem, every rank on its share of the `data.num_heldout` problems.
"""

from __future__ import annotations

from sposd import dist as sdist
from sposd.config import BenchmarkCfg, TrainCfg
from sposd.errors import UserError
from sposd.evals.benchmarks import load_benchmark, render_prompts
from sposd.evaluate import sample_and_grade
from sposd.loop.metrics import progress_bar
from sposd.loop.rollouts import BENCHMARK_ROUND, HELDOUT_ROUND, reseed
from sposd.types import Prompt

BENCH = "toy"


def heldout_eval(cfg: TrainCfg, tokenizer, *, student_ids, rank: int, world: int) -> HeldoutEval | None:
    """The held-out evaluation of a toy-task run (None when the data is not the toy task or it is turned off)."""
    if cfg.data.kind != "toy" or not cfg.heldout_eval or cfg.data.num_heldout < 1:
        return None
    return HeldoutEval(cfg, tokenizer, student_ids=student_ids, rank=rank, world=world)


class HeldoutEval:
    """Sampled accuracy on the toy task's held-out split, averaged over every rank's share.

    Args:
        student_ids: the training prompt's last touch on rendered ids (e.g. the stripped chat template).
    """

    def __init__(self, cfg: TrainCfg, tokenizer, *, student_ids, rank: int, world: int) -> None:
        instruction = cfg.data.instruction
        bench_cfg = BenchmarkCfg(
            kind="toy",
            # the student's user message of training (`build_user_message`), as a benchmark prompt template
            prompt=f"Problem: {{problem}}\n\n{instruction}" if instruction else "Problem: {problem}",
            enable_thinking=cfg.model.enable_thinking,
            limit=cfg.data.num_heldout,
        )
        try:
            bench = load_benchmark(BENCH, bench_cfg, cfg.eval, data=cfg.data, seed=cfg.seed)
        except ValueError as e:
            raise UserError(f"held-out evaluation: {e}") from e
        mine = render_prompts(bench, tokenizer)[rank::world]
        self.prompts = [
            Prompt(id=p.id, problem=p.problem, prompt_ids=student_ids(p.prompt_ids), answer=p.answer, meta=p.meta)
            for p in mine
        ]
        self.samples, self.every = cfg.heldout_samples, cfg.heldout_every
        self.progress = cfg.logger.console and rank == 0

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def __call__(self, c, *, step: int) -> float:
        """The accuracy of the engine's current weights (every rank must call it: the counts are all-reduced)."""
        reseed(c.cfg.seed, step, HELDOUT_ROUND, c.rank)
        bar = progress_bar(len(self.prompts), 0, enabled=self.progress, desc="held-out", unit="problem", leave=False)
        correct = total = 0
        try:
            for rows in sample_and_grade(
                c.engine, c.verifier, self.prompts, k=self.samples, sampling=c.sampling, fingerprints={BENCH: ""}
            ):
                correct += sum(r["correct"] for r in rows)
                total += len(rows)
                if bar is not None:
                    bar.update(len({r["id"] for r in rows}))
        finally:
            if bar is not None:
                bar.close()
        right, n = sdist.all_reduce([correct, total])
        return right / max(n, 1)


def evaluate_step(c, step: int, summary: dict) -> dict[str, float]:
    """The evaluations due after `step`: held-out accuracy every `heldout_every` steps, benchmarks every
    `train.eval.every` steps and at the end."""
    metrics: dict[str, float] = {}
    if c.heldout and c.heldout.due(step):
        metrics["eval/heldout_accuracy"] = c.heldout(c, step=step)
        if step == c.cfg.num_steps:
            summary["trained_accuracy"] = metrics["eval/heldout_accuracy"]
    if c.benchmarks.due(step):
        reseed(c.cfg.seed, step, BENCHMARK_ROUND, c.rank)
        metrics.update(c.benchmarks(step, c.engine, c.verifier))
    return metrics


def final_evaluations(c, summary: dict) -> dict:
    """summary.json's evaluation results after the last step: the trained held-out accuracy and the benchmarks'
    last and best evaluation."""
    out = {}
    if c.heldout and "trained_accuracy" not in summary:
        out["trained_accuracy"] = c.heldout(c, step=c.cfg.num_steps)
    if (report := c.benchmarks.report()) is not None:
        out["eval"] = report  # the last and the best evaluation, each with its step
    return out
