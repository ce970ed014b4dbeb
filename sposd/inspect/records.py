"""Reading what training recorded for `sposd inspect`, and the per-step summary.

A run directory's `inspect/step_N.jsonl.gz` holds one JSON object per inspected completion:
    step, rank, row, id, problem, answer, solution, correct, reward, advantage, group_pass_rate
    distill_weight, distill_len      the row's distillation weight and the positions that may receive the loss
    loss                             divergence, beta, support, topk, clip_max, clip_mode, sampled_token, temperature
    prompt, teacher_context          the student's and the teacher's context, decoded with special tokens
    privileged                       [start, end) of the privileged text in teacher_context, or null
    tokens                           the completion, one decoded piece per token
    div, div_raw                     per token: D_t as the loss sums it (clipped) and without the clip
    clipped                          per token: vocabulary entries the element clip clamped, or 1 where a token clip did
    weight                           per token: the loss weight (the row's, 0 at positions the selection drops)
    p_student, p_teacher             per token: probability of the sampled token
    teacher_top, student_top         per token: [[piece, probability], ...] the K most likely next tokens

Summary of a step (`step_summary`), over the positions with a loss weight:
    top5_mass          share of the summed |D_t| on the top 5% of positions by |D_t| (an element clip can leave D_t
                       negative: magnitudes, the size of the signal either way)
    clipped_frac       share of positions the clip changed
    large_threshold    the |D_t| of the top-5% boundary: a position at or above it is a "large disagreement"
    first_large / first_error   per row, the token of the first large disagreement and of the first arithmetic or
                       answer error (toy task, `arith.first_error_char`); lead = first_error - first_large
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

from sposd.errors import UserError
from sposd.inspect.arith import char_to_token, first_error_char

FORMAT_VERSION = 1
TOP_SHARE = 0.05
_NAME = re.compile(r"step_(\d+)\.jsonl\.gz$")


def inspect_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "inspect"


def step_path(run_dir: Path, step: int) -> Path:
    return inspect_dir(run_dir) / f"step_{step}.jsonl.gz"


def recorded_steps(run_dir: Path) -> list[int]:
    """Steps with a recording, ascending; a UserError naming what is missing when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; give a run directory of `sposd train`")
    d = inspect_dir(run_dir)
    names = [p.name for p in d.glob("step_*.jsonl.gz")] if d.is_dir() else []
    steps = sorted(int(m.group(1)) for n in names if (m := _NAME.search(n)))
    if not steps:
        raise UserError(
            f"{run_dir} has no inspect/step_N.jsonl.gz; train with train.inspect.every=N (e.g. 5) to record the "
            "distillation signal"
        )
    return steps


def load_step(run_dir: Path, step: int) -> list[dict]:
    """The rows recorded at `step`; a UserError naming the recorded steps when there is none."""
    steps = recorded_steps(run_dir)
    if step not in steps:
        raise UserError(f"step {step} was not recorded in {inspect_dir(run_dir)}; recorded steps: {_ranges(steps)}")
    path = step_path(run_dir, step)
    try:
        rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line]
    except (OSError, EOFError, ValueError) as e:
        raise UserError(f"{path} is not a readable inspect recording ({type(e).__name__}: {e})") from None
    for r in rows:
        if r.get("version") != FORMAT_VERSION or "div" not in r or "tokens" not in r:
            raise UserError(f"{path}: a row of format version {r.get('version')!r}; this sposd reads {FORMAT_VERSION}")
    return rows


def _ranges(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 12 else f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


def loss_positions(row: dict) -> list[int]:
    """Positions with a loss weight (all of them when a row carries no weights)."""
    w = row.get("weight") or [1.0] * len(row["div"])
    return [t for t, x in enumerate(w) if x > 0]


def top_share_mass(values: list[float], share: float = TOP_SHARE) -> tuple[float, float]:
    """(share of sum(values) on the ceil(share n) largest values, the smallest of those values) for values >= 0;
    (0, inf) if empty or all zero."""
    if not values or sum(values) <= 0:
        return 0.0, math.inf
    top = sorted(values, reverse=True)[: max(1, math.ceil(share * len(values) - 1e-9))]
    return sum(top) / sum(values), top[-1]


def row_first_error(row: dict) -> int | None:
    """Token index of the row's first arithmetic / answer error (toy task), or None."""
    pieces = row["tokens"]
    return char_to_token(pieces, first_error_char("".join(pieces), row.get("problem", ""), row.get("answer", "")))


def step_summary(rows: list[dict]) -> dict:
    """The step's summary (module docstring) and per row: first_large, first_error, lead."""
    values = [abs(row["div"][t]) for row in rows for t in loss_positions(row)]
    mass, threshold = top_share_mass(values)
    clipped = [row["clipped"][t] > 0 for row in rows for t in loss_positions(row)]
    per_row = []
    for row in rows:
        first_large = next((t for t in loss_positions(row) if abs(row["div"][t]) >= threshold), None)
        first_error = row_first_error(row)
        lead = None if first_large is None or first_error is None else first_error - first_large
        per_row.append({"first_large": first_large, "first_error": first_error, "lead": lead})
    leads = [r["lead"] for r in per_row if r["lead"] is not None]
    return {
        "rows": len(rows),
        "positions": len(values),
        "div_sum": sum(row["div"][t] for row in rows for t in loss_positions(row)),
        "abs_div_sum": sum(values),
        "top5_mass": mass,
        "large_threshold": threshold,
        "clipped_frac": sum(clipped) / max(len(clipped), 1),
        "rows_with_error": sum(r["first_error"] is not None for r in per_row),
        "large_at_or_before_error": sum(x >= 0 for x in leads),
        "mean_lead": sum(leads) / len(leads) if leads else None,
        "per_row": per_row,
    }


def mass_by_relative_position(rows: list[dict], bins: int = 10) -> list[float]:
    """Share of the step's summed |D_t| in each tenth (bins) of the completions' relative position t / n."""
    out = [0.0] * bins
    for row in rows:
        n = len(row["div"])
        for t in loss_positions(row):
            out[min(bins - 1, int(bins * t / max(n, 1)))] += abs(row["div"][t])
    total = sum(out)
    return [x / total for x in out] if total > 0 else out
