"""Step schedules for the coefficient of an auxiliary loss (e.g. lambda_SS of SSOPD, spec/ALGORITHMS.md section 14)."""

from __future__ import annotations

SCHEDULES = ("constant", "linear_decay", "warmup")


def coef_at(
    step: int,
    total_steps: int,
    *,
    base: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    final_ratio: float = 0.0,
) -> float:
    """Coefficient of an auxiliary loss at (1-based) training step `step`.

    constant -> base; linear_decay -> linear from base at step 1 to base * final_ratio at total_steps (held there
    after; base when total_steps == 1); warmup -> base * min(1, step / warmup_steps).

    Args:
        step: the current training step, 1-based.
        total_steps: the number of training steps (linear_decay only).
        base: the coefficient's nominal value.
        schedule: one of SCHEDULES.
        warmup_steps: ramp length in steps (warmup only, >= 1).
        final_ratio: the fraction of base reached at total_steps (linear_decay only).
    Returns: the coefficient at this step.
    """
    if schedule == "constant":
        return base
    if schedule == "linear_decay":
        if total_steps <= 1:
            return base
        frac = min(max((step - 1) / (total_steps - 1), 0.0), 1.0)
        return base * (1.0 - (1.0 - final_ratio) * frac)
    if schedule == "warmup":
        if warmup_steps < 1:
            raise ValueError(f"warmup schedule needs warmup_steps >= 1, got {warmup_steps}")
        return base * min(1.0, step / warmup_steps)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")
