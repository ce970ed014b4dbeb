"""Evaluations during training: the held-out accuracy (the toy benchmark's evaluation) and `train.eval.every`.

The held-out accuracy is `sposd eval`'s path (`load_benchmark` + `sample_and_grade`) on the `toy` benchmark, with
what makes it the training task's held-out score: the student's prompt as in training, the rollout sampling,
`heldout_samples` samples per problem, every rank on its share of the `data.num_heldout` problems.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sposd import dist as sdist
from sposd.config import BenchmarkCfg, TrainCfg
from sposd.errors import UserError
from sposd.evals.benchmarks import Benchmark, load_benchmark, render_prompts
from sposd.evals.results import grading_settings
from sposd.evaluate import (
    RESULTS,
    SAMPLES,
    Recorder,
    choose_max_model_len,
    eval_sampling,
    eval_settings,
    fingerprint_inputs,
    load_benchmarks,
    sample_and_grade,
)
from sposd.logging import write_atomic, write_jsonl
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


# ---- evaluation during training ------------------------------------------------------------------------
class TrainingEval:
    """`sposd train train.eval.every=N`: evaluate the policy on `benchmarks` every N steps and at the last step.

    Runs `sample_and_grade` on the training engine (whose weights were just synced), each rank on its share of
    the problems; rank 0 writes `eval/step_N/{samples.jsonl,results.json}` (the `sposd eval` schema) and the
    scores go into metrics.jsonl as `eval/<bench>/avg@k` (+ maj@k, pass@1, and `eval/macro/avg@k`).
    `report()` gives summary.json the last and the best evaluation by macro Avg@k.
    """

    def __init__(self, cfg: TrainCfg, tokenizer, run_dir: Path, *, model_path: str, rank: int, world: int) -> None:
        from sposd.models.paths import context_length

        self.cfg, self.ev, self.run_dir, self.rank, self.world = cfg, cfg.eval, run_dir, rank, world
        self.history: list[dict] = []
        self.benches: list[Benchmark] = []
        self.max_model_len = 0
        self._own_verifier = None
        self.every = cfg.train.eval.every
        if not self.every:
            return
        self.benches = load_benchmarks(cfg.benchmarks, self.ev, data=cfg.data, seed=cfg.seed, tokenizer=tokenizer)
        ctx = context_length(model_path, trust_remote_code=cfg.model.trust_remote_code)
        self.max_model_len = choose_max_model_len(self.ev, self.benches, context=ctx)
        self.model_path = model_path

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.cfg.num_steps)

    def __call__(self, step: int, engine, verifier) -> dict[str, float]:
        """Evaluate at `step` when due; returns the metrics to log ({} when not due). Every rank must call it."""
        if not self.due(step):
            return {}
        t0 = time.perf_counter()
        verifier = self._verifier_for(verifier)
        out_dir = self.run_dir / "eval" / f"step_{step}"
        recorder = Recorder(out_dir, self.benches, settings={**self._settings(verifier), "train_step": step},
                            k=self.ev.k, results_every_s=float("inf"))  # fmt: skip
        mine = [p for b in self.benches for p in b.prompts[self.rank :: self.world]]
        batches = sample_and_grade(engine, verifier, mine, k=self.ev.k, sampling=eval_sampling(self.ev),
                                   fingerprints=recorder.fingerprints)  # fmt: skip
        rows = []
        bar = None
        if self.rank == 0 and self.cfg.logger.console:  # this rank's share of the problems
            from tqdm import tqdm

            bar = tqdm(total=len(mine), desc=f"eval step {step}", unit="problem", dynamic_ncols=True, leave=False)
        for batch in batches:
            rows += batch
            if bar is not None:
                bar.update(len({(r["benchmark"], r["id"]) for r in batch}))
        if bar is not None:
            bar.close()
        every_rank = [r for part in sdist.all_gather_objects(rows) for r in part]
        recorder.add(every_rank, save=False)
        results = recorder.results(complete=True)
        if self.rank == 0:
            write_jsonl(out_dir / SAMPLES, every_rank)
            write_atomic(out_dir / RESULTS, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        metrics = {}
        for name, b in results["benchmarks"].items():
            metrics.update(
                {
                    f"eval/{name}/avg@k": b["avg@k"],
                    f"eval/{name}/maj@k": b["maj@k"],
                    f"eval/{name}/pass@1": b["pass@k"]["1"],
                }
            )
        metrics["eval/macro/avg@k"] = results["macro"]["avg@k"]
        self.history.append({"step": step, **metrics})
        return {**metrics, "time/eval_s": time.perf_counter() - t0}

    def report(self) -> dict | None:
        """summary.json's `eval`: the last and the best evaluation (by macro Avg@k; the earliest on ties), and the
        three readings of spec 0.8 (`checkpoint_views`)."""
        from sposd.evals.results import checkpoint_views

        if not self.history:
            return None
        key = "eval/macro/avg@k"
        best = max(self.history, key=lambda h: h[key])  # max keeps the first (earliest) of equal scores
        return {
            "k": self.ev.k,
            "benchmarks": [b.name for b in self.benches],
            "selected_by": f"{key} (unweighted mean of avg@k over the benchmarks)",
            "last": self.history[-1],
            "best": best,
            "checkpoints": checkpoint_views(self.history),  # final / best per benchmark / best macro (spec 0.8)
            "results": f"eval/step_<N>/{RESULTS}",
        }

    def close(self) -> None:
        if self._own_verifier is not None:
            self._own_verifier.close()

    def _settings(self, verifier) -> dict:
        """results.json's settings of every evaluation of this run (the model path is the run's starting point)."""
        c = self.cfg
        inputs = {b.name: fingerprint_inputs(b, self.ev, model_path=self.model_path, dtype=c.model.dtype, seed=c.seed)
                  for b in self.benches}  # fmt: skip
        grading = grading_settings(answer_line_fallback=verifier.answer_line_fallback, timeout_s=verifier.timeout_s)
        settings = eval_settings(self.ev, model_path=self.model_path, model_cfg_path=c.model.path,
                                 dtype=c.model.dtype, max_model_len=self.max_model_len, seed=c.seed, inputs=inputs,
                                 grading=grading, benches=self.benches)  # fmt: skip
        settings["sampling"]["engine_seed"] = f"the training engine's: seed * 1000 + rank = {c.seed * 1000} + rank"
        return settings

    def _verifier_for(self, verifier):
        """The training verifier when its grading settings are the evaluation's, else a pool of our own."""
        if (verifier.answer_line_fallback, verifier.timeout_s) == (
            self.ev.answer_line_fallback,
            self.ev.grade_timeout_s,
        ):
            return verifier
        if self._own_verifier is None:
            from sposd.rewards import VerifierPool

            self._own_verifier = VerifierPool(
                self.ev.grade_workers,
                timeout_s=self.ev.grade_timeout_s,
                answer_line_fallback=self.ev.answer_line_fallback,
            )
        return self._own_verifier
