"""`sposd eval`: k samples per problem from vLLM, graded by math-verify, summarised as Avg@k, pass@k', maj@k.

    benchmarks -> chat-templated prompts -> vLLM (all queued at once; problems come back as they finish)
               -> verifier pool (hard per-answer deadline) -> samples.jsonl (appended and fsynced as they come)
               -> results.json (rewritten every eval.results_every_s while running, final at the end)

Rerunning the same command into the same run directory (`hydra.run.dir=...`) resumes: the problems already in
samples.jsonl are skipped, and a run directory made with other settings is refused. `sposd train train.eval.every=N`
runs the same `sample_and_grade` on the training engine (`sposd.loop.evals.TrainingEval`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sposd.config import BenchmarkCfg, DataCfg, EvalAppCfg, EvalCfg
from sposd.errors import UserError
from sposd.evals.benchmarks import Benchmark, load_benchmark, render_prompts
from sposd.evals.results import (
    benchmark_block,
    build_results,
    diff_settings,
    fingerprint,
    format_table,
    grading_settings,
)
from sposd.evals.samples import SampleStore, group_outcomes
from sposd.logging import write_atomic
from sposd.rewards.extract import extract_answer
from sposd.rollout.base import SamplingCfg
from sposd.types import Prompt, RolloutGroup

RESULTS, SAMPLES = "results.json", "samples.jsonl"
# Fields of a samples.jsonl row that results.json needs (completions and problem texts stay on disk only).
_OUTCOME_KEYS = ("benchmark", "id", "sample", "correct", "extracted", "num_tokens", "truncated")
# eval.* keys that decide samples and verdicts (a resume with any of them changed is refused)
_FINGERPRINT_EVAL_KEYS = ("k", "temperature", "top_p", "top_k", "min_p", "max_new_tokens", "max_model_len",
                          "answer_line_fallback")  # fmt: skip


def evaluate(cfg: EvalAppCfg, run_dir: Path, *, engine=None, verifier=None, progress: bool = True) -> dict:
    """Evaluate `cfg.model` on `cfg.benchmarks`; write samples.jsonl and results.json to run_dir; return results.

    Args:
        cfg: the validated `sposd eval` config.
        run_dir: the run directory (Hydra's); an earlier interrupted run there is resumed.
        engine, verifier: injected components (tests); built from cfg when None.
        progress: show a progress bar (problems, samples/s, running Avg@k).
    """
    from sposd.logging import quiet_libraries
    from sposd.models.paths import context_length, load_tokenizer

    quiet_libraries(cfg.hardware.device, verbose=cfg.verbose)
    ev = cfg.eval
    run_dir.mkdir(parents=True, exist_ok=True)

    # 1. the model (an adapter is merged into its base first: vLLM serves a plain model), its tokenizer and
    # every benchmark's prompts
    model_path = eval_model_path(cfg, run_dir)
    tokenizer = load_tokenizer(model_path, cfg.model)
    benches = load_benchmarks(cfg.benchmarks, ev, data=cfg.data, seed=cfg.seed, tokenizer=tokenizer)
    ctx = context_length(model_path, trust_remote_code=cfg.model.trust_remote_code)
    max_model_len = choose_max_model_len(ev, benches, context=ctx)

    # 2. the settings actually used, and what an interrupted run here already finished
    inputs = {
        b.name: fingerprint_inputs(b, ev, model_path=model_path, dtype=cfg.model.dtype, seed=cfg.seed) for b in benches
    }
    settings = eval_settings(
        ev,
        model_path=model_path,
        model_cfg_path=cfg.model.path,
        dtype=cfg.model.dtype,
        max_model_len=max_model_len,
        seed=cfg.seed,
        inputs=inputs,
        benches=benches,
    )
    check_resumable(run_dir / RESULTS, inputs)
    recorder = Recorder(run_dir, benches, settings=settings, k=ev.k, results_every_s=ev.results_every_s)
    todo = recorder.resume()
    recorder.write(complete=not todo)

    # 3. sample and grade what is left, saving each engine step's finished problems
    if todo:
        from sposd.rewards import VerifierPool
        from sposd.rollout.vllm_engine import VLLMEngine

        hw = cfg.hardware
        own = []  # what this call builds, it closes
        bar = None
        try:
            if verifier is None:
                verifier = VerifierPool(
                    ev.grade_workers, timeout_s=ev.grade_timeout_s, answer_line_fallback=ev.answer_line_fallback
                )
                own.append(verifier)
            if engine is None:
                engine = VLLMEngine.from_config(
                    model_path,
                    cfg.model,
                    hw,
                    max_model_len=max_model_len,
                    seed=cfg.seed,
                    gpu_memory_utilization=ev.gpu_memory_utilization,
                    enable_sleep_mode=False,  # evaluation never hands the GPU to a learner
                )
                own.append(engine)
            bar = recorder.progress_bar(enabled=progress)
            for rows in sample_and_grade(
                engine, verifier, todo, k=ev.k, sampling=eval_sampling(ev), fingerprints=recorder.fingerprints
            ):
                recorder.add(rows)
                recorder.update_bar(bar, rows)
        finally:
            if bar is not None:
                bar.close()
            recorder.write(complete=recorder.is_complete())
            for component in reversed(own):
                component.close()
    return recorder.results(complete=True)


# ---- the shared path: sample, grade, make rows ---------------------------------------------------------
def eval_model_path(cfg: EvalAppCfg, run_dir: Path) -> str:
    """The model folder vLLM evaluates: model.path resolved, or a PEFT adapter merged into its base under
    run_dir/merged_model (`sposd.models.lora.eval_adapter` says which adapter and base)."""
    from sposd.errors import UserError
    from sposd.models.lora import eval_adapter, merge_adapter_folder
    from sposd.models.paths import resolve_model_path

    try:
        adapter = eval_adapter(cfg.model)
        if adapter is None:
            return resolve_model_path(cfg.model, data=cfg.data, cache_dir=cfg.cache_dir)
        folder, base = adapter
        if base is not None:
            base = resolve_model_path(cfg.model, data=cfg.data, cache_dir=cfg.cache_dir)
        return merge_adapter_folder(folder, base=base, out_dir=run_dir / "merged_model")
    except ValueError as e:
        raise UserError(str(e)) from e


def eval_sampling(ev: EvalCfg) -> SamplingCfg:
    """vLLM sampling of an evaluation (per-request seeds unset: the engine seed decides, samples differ)."""
    return SamplingCfg(
        temperature=ev.temperature,
        top_p=ev.top_p,
        top_k=ev.top_k,
        min_p=ev.min_p,
        max_new_tokens=ev.max_new_tokens,
        logprobs=False,
    )


def sample_and_grade(
    engine, verifier, prompts: Sequence[Prompt], *, k: int, sampling: SamplingCfg, fingerprints: dict[str, str]
) -> Iterator[list[dict]]:
    """k samples of every prompt, graded; yields the samples.jsonl rows of the problems finished at each step.

    Args:
        engine: a RolloutEngine (`generate_stream`); verifier: a VerifierPool.
        prompts: rendered prompts, `meta["benchmark"]` naming their benchmark.
        fingerprints: benchmark -> settings fingerprint, stored in every row (resume checks it).
    """
    for groups in engine.generate_stream(prompts, n=k, sampling=sampling):
        yield graded_rows(groups, verifier, fingerprints=fingerprints)


def graded_rows(groups: list[RolloutGroup], verifier, *, fingerprints: dict[str, str]) -> list[dict]:
    """One samples.jsonl row per completion: the problem, the completion, its extracted answer and verdict."""
    verdicts = verifier.grade([(c.text, g.prompt.answer) for g in groups for c in g.completions])
    it = iter(verdicts)
    rows = []
    for g in groups:
        bench = g.prompt.meta["benchmark"]
        for i, c in enumerate(g.completions):
            rows.append(
                {
                    "benchmark": bench,
                    "id": g.prompt.id,
                    "sample": i,
                    "problem": g.prompt.problem,
                    "answer": g.prompt.answer,
                    "completion": c.text,
                    "extracted": extract_answer(c.text, answer_line_fallback=verifier.answer_line_fallback),
                    "correct": bool(next(it)),
                    "num_tokens": len(c.token_ids),
                    "truncated": c.truncated,
                    "fingerprint": fingerprints[bench],
                }
            )
    return rows


# ---- setup helpers --------------------------------------------------------------------------------------
def load_benchmarks(
    cfgs: dict[str, BenchmarkCfg], ev: EvalCfg, *, data: DataCfg, seed: int, tokenizer
) -> list[Benchmark]:
    """Load every selected benchmark and render its prompts; file and data errors become one-line UserErrors."""
    benches = []
    for name, bcfg in cfgs.items():
        try:
            bench = load_benchmark(name, bcfg, ev, data=data, seed=seed)
        except (FileNotFoundError, ValueError) as e:
            msg = str(e)
            raise UserError(msg if msg.startswith(f"benchmarks.{name}") else f"benchmarks.{name}: {msg}") from e
        render_prompts(bench, tokenizer)
        benches.append(bench)
    return benches


def choose_max_model_len(ev: EvalCfg, benches: list[Benchmark], *, context: int | None) -> int:
    """eval.max_model_len, else the smaller of the model's context and the longest prompt + max_new_tokens.

    Either way a request generates at most min(max_new_tokens, max_model_len - its prompt length) tokens, and
    every prompt must leave room for at least one token.
    """
    longest = max(len(p.prompt_ids) for b in benches for p in b.prompts)
    mml = ev.max_model_len or min(context or longest + ev.max_new_tokens, longest + ev.max_new_tokens)
    for b in benches:
        for p in b.prompts:
            if len(p.prompt_ids) >= mml:
                raise UserError(
                    f"benchmarks.{b.name}: problem {p.id!r} has a {len(p.prompt_ids)}-token prompt, which leaves no "
                    f"room under max_model_len={mml} (the model's context: {context}); raise eval.max_model_len or "
                    f"leave it out with benchmarks.{b.name}.limit"
                )
    return mml


def fingerprint_inputs(bench: Benchmark, ev: EvalCfg, *, model_path: str, dtype: str, seed: int) -> dict:
    """The settings that decide one benchmark's samples and verdicts (flat, for readable diffs on resume).

    Not included: limits (a larger limit continues a run), the derived max_model_len (each request's budget is
    min(max_new_tokens, model context - prompt) either way), grading timeouts and worker counts.
    """
    source = {k: v for k, v in bench.source.items() if k != "limit"}
    return {
        "model.path": model_path,
        "model.dtype": dtype,
        "seed": seed,
        **{f"eval.{k}": getattr(ev, k) for k in _FINGERPRINT_EVAL_KEYS},
        f"benchmarks.{bench.name}.source": json.dumps(source, sort_keys=True),
        f"benchmarks.{bench.name}.prompt": bench.prompt,
        f"benchmarks.{bench.name}.enable_thinking": bench.enable_thinking,
    }


def eval_settings(
    ev: EvalCfg,
    *,
    model_path: str,
    model_cfg_path: str,
    dtype: str,
    max_model_len: int,
    seed: int,
    inputs: dict[str, dict],
    grading: dict | None = None,
    benches: list[Benchmark] | None = None,
) -> dict:
    """results.json's `settings`: everything that decided the numbers, as they ran.

    With `benches`, the prompt and thinking switch are the benchmarks' own (the toy benchmark keeps its training
    prompt, thinking off) and `sampling.max_new_tokens` is the largest budget a request had: eval.max_new_tokens
    capped by max_model_len minus the shortest prompt (the setting is kept as `max_new_tokens_setting`).
    """
    prompt = {"template": ev.prompt, "enable_thinking": ev.enable_thinking}
    budget = ev.max_new_tokens
    if benches:
        used = {(b.prompt, b.enable_thinking) for b in benches}
        if len(used) == 1:
            (template, thinking), = used
            prompt = {"template": template, "enable_thinking": thinking}
        else:
            prompt = {"template": {b.name: b.prompt for b in benches},
                      "enable_thinking": {b.name: b.enable_thinking for b in benches}}  # fmt: skip
        shortest = min((len(p.prompt_ids) for b in benches for p in b.prompts), default=0)
        budget = min(ev.max_new_tokens, max_model_len - shortest)
    sampling = {
        "k": ev.k,
        "temperature": ev.temperature,
        "top_p": ev.top_p,
        "top_k": ev.top_k,
        "min_p": ev.min_p,
        "max_new_tokens": budget,
        "engine": "vllm",
        "engine_seed": seed,
        "per_request_seed": None,
    }
    if budget != ev.max_new_tokens:
        sampling["max_new_tokens_setting"] = ev.max_new_tokens
    return {
        "preset": ev.name,
        "seed": seed,
        "model": {"path": model_cfg_path, "resolved_path": model_path, "dtype": dtype, "max_model_len": max_model_len},
        "sampling": sampling,
        "prompt": {**prompt, "chat_template": "the model's, generation prompt added"},
        "grading": grading
        or grading_settings(answer_line_fallback=ev.answer_line_fallback, timeout_s=ev.grade_timeout_s),
        "limit": ev.limit,
        "fingerprints": {name: {"value": fingerprint(i), "inputs": i} for name, i in inputs.items()},
    }


def check_resumable(results_path: Path, inputs: dict[str, dict]) -> None:
    """Refuse to resume into a run directory whose recorded settings differ for a selected benchmark."""
    if not results_path.exists():
        return
    try:
        old = json.loads(results_path.read_text())["settings"]["fingerprints"]
    except (ValueError, KeyError, TypeError):
        return  # not ours, or torn: the rows' own fingerprints still guard the resume
    for name, new in inputs.items():
        if name in old and old[name].get("inputs") != new:
            keys = diff_settings(old[name].get("inputs") or {}, new)
            changes = ", ".join(f"{k}: {old[name]['inputs'].get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
            raise UserError(
                f"{results_path.parent} holds a {name} evaluation made with other settings ({changes}); rerun with "
                "the same settings to resume, or choose a new run directory (hydra.run.dir=...)"
            )


class Recorder:
    """The graded rows of one evaluation: samples.jsonl on disk, outcomes in memory, results.json, progress."""

    def __init__(
        self, run_dir: Path, benches: list[Benchmark], *, settings: dict, k: int, results_every_s: float = 30.0
    ) -> None:
        self.run_dir, self.benches, self.settings, self.k = run_dir, benches, settings, k
        self.fingerprints = {n: f["value"] for n, f in settings["fingerprints"].items()}
        self.store = SampleStore(run_dir / SAMPLES)
        self.outcomes: list[dict] = []
        self.results_every_s = results_every_s
        self._last_write = time.monotonic()
        self._started = time.monotonic()
        self._new_samples = 0

    def resume(self) -> list[Prompt]:
        """Keep the complete problems of an earlier run here; return the prompts still to do, in order."""
        try:
            state = self.store.open(k=self.k, fingerprints=self.fingerprints)
        except ValueError as e:
            raise UserError(str(e)) from e
        self.outcomes = [
            {k: r.get(k) for k in _OUTCOME_KEYS}
            for r in state.rows
            if str(r["id"]) in state.done.get(r["benchmark"], ())
        ]
        if state.kept_rows or state.dropped_rows:
            done = sum(len(v) for v in state.done.values())
            print(
                f"resuming {self.run_dir}: {done} problems already done"
                + (f", {state.dropped_rows} rows of unfinished problems dropped" if state.dropped_rows else "")
            )
        return [p for b in self.benches for p in b.prompts if p.id not in state.done[b.name]]

    def add(self, rows: list[dict], *, save: bool = True) -> None:
        """Record rows (appended to samples.jsonl, flushed and fsynced); rewrite results.json now and then."""
        if save:
            self.store.append(rows)
        self.outcomes += [{k: r.get(k) for k in _OUTCOME_KEYS} for r in rows]
        self._new_samples += len(rows)
        if time.monotonic() - self._last_write >= self.results_every_s:
            self.write(complete=False)

    def is_complete(self) -> bool:
        done = {(o["benchmark"], str(o["id"])) for o in self.outcomes}
        return all((b.name, p.id) in done for b in self.benches for p in b.prompts)

    def results(self, *, complete: bool) -> dict:
        """results.json: blocks of the benchmarks with finished problems (problems in dataset order)."""
        grouped = group_outcomes(self.outcomes)
        blocks, progress = {}, {}
        for b in self.benches:
            probs = {p.id: p for p in grouped.get(b.name, [])}
            ordered = [probs[p.id] for p in b.prompts if p.id in probs]
            progress[b.name] = f"{len(ordered)}/{len(b.prompts)}"
            if ordered:
                blocks[b.name] = benchmark_block(
                    ordered,
                    extra={
                        "source": b.source,
                        "prompt": b.prompt,
                        "enable_thinking": b.enable_thinking,
                        "fingerprint": self.fingerprints[b.name],
                    },
                )
        return build_results(blocks, settings=self.settings, complete=complete, progress=None if complete else progress)

    def write(self, *, complete: bool) -> dict:
        results = self.results(complete=complete)
        write_atomic(self.run_dir / RESULTS, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        self._last_write = time.monotonic()
        return results

    def progress_bar(self, *, enabled: bool):
        if not enabled:
            return None
        from tqdm import tqdm

        total = sum(len(b.prompts) for b in self.benches)
        done = len({(o["benchmark"], str(o["id"])) for o in self.outcomes})
        bar = tqdm(total=total, initial=done, desc="eval", unit="problem", dynamic_ncols=True)
        self._started = time.monotonic()
        self._new_samples = 0
        self._postfix(bar)
        return bar

    def update_bar(self, bar, rows: list[dict]) -> None:
        if bar is not None:
            self._postfix(bar, refresh=False)
            bar.update(len({(r["benchmark"], r["id"]) for r in rows}))

    def _postfix(self, bar, *, refresh: bool = True) -> None:
        """samples/s of this session, and the running Avg@k (= correct / samples) over every finished problem."""
        n = len(self.outcomes)
        avg = f"{sum(bool(o['correct']) for o in self.outcomes) / n:.3f}" if n else "-"
        rate = self._new_samples / max(time.monotonic() - self._started, 1e-9)
        bar.set_postfix_str(f"samples/s={rate:.1f} avg@k={avg}", refresh=refresh)


def print_results(results: dict, run_dir: Path) -> None:
    print(format_table(results))
    print(f"results: {run_dir / RESULTS}   samples: {run_dir / SAMPLES}")
