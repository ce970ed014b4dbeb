"""`sposd grade`: re-grade saved completions (no generation, no vLLM) and summarise them like `sposd eval`.

Input: a JSONL file, one sample per line, with `benchmark`, `id`, `completion`, `answer` (the gold answer); the
rows of one (benchmark, id) are the samples of one problem. `sposd eval`'s samples.jsonl is valid input, and its
`num_tokens` / `truncated` fields, when present, give the length and truncation statistics.
Output: DIR/graded.jsonl (every input row plus `correct` and `extracted`) and DIR/results.json (the schema of
`sposd eval`; `settings` keeps the sampling settings of an eval run found next to the input, and records the
grading actually done here).
"""

from __future__ import annotations

import json
from pathlib import Path

from sposd.evals.results import benchmark_block, build_results, grading_settings
from sposd.evals.samples import group_outcomes, read_rows
from sposd.logging import write_atomic, write_jsonl

GRADED, RESULTS = "graded.jsonl", "results.json"


def grade_file(
    path: Path,
    out_dir: Path | None = None,
    *,
    timeout_s: float = 5.0,
    answer_line_fallback: bool = True,
    num_workers: int | None = None,
    verifier=None,
) -> dict:
    """Grade every row of `path`; write graded.jsonl and results.json to out_dir (default: path's folder).

    Raises:
        FileNotFoundError, ValueError: a missing file or a malformed row ("<file>:<line>: ..."), before any grading.
    """
    from sposd.rewards import VerifierPool
    from sposd.rewards.extract import extract_answer

    rows = read_rows(path)
    out_dir = path.parent if out_dir is None else out_dir
    own = verifier is None
    if own:
        verifier = VerifierPool(num_workers, timeout_s=timeout_s, answer_line_fallback=answer_line_fallback)
    fallback = verifier.answer_line_fallback  # an injected pool's own rule decides, so record that one
    try:
        verdicts = verifier.grade([(r["completion"], str(r["answer"])) for r in rows])
    finally:
        if own:
            verifier.close()
    graded = [
        {**r, "correct": bool(ok), "extracted": extract_answer(r["completion"], answer_line_fallback=fallback)}
        for r, ok in zip(rows, verdicts, strict=True)
    ]
    blocks = {name: benchmark_block(problems) for name, problems in group_outcomes(graded).items()}
    settings = _previous_settings(path.parent / RESULTS)
    settings["grading"] = grading_settings(answer_line_fallback=fallback, timeout_s=verifier.timeout_s)
    settings["regraded"] = {"by": "sposd grade", "input": str(path)}
    results = build_results(blocks, settings=settings, complete=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / GRADED, graded)
    write_atomic(out_dir / RESULTS, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _previous_settings(results_path: Path) -> dict:
    """The settings of the eval run that wrote the input (its results.json beside it), else {}."""
    try:
        old = json.loads(results_path.read_text())
        return {k: v for k, v in old["settings"].items() if k != "regraded"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
