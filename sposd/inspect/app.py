"""`sposd inspect <run dir> [--step N] [--out page.html] [--png summary.png]`: the page of one recorded step
(default: the last) and the summary PNG across every recorded step."""

from __future__ import annotations

from pathlib import Path

from sposd.errors import UserError
from sposd.inspect.page import render_page
from sposd.inspect.records import inspect_dir, load_step, recorded_steps, step_summary


def inspect_run(
    run_dir: Path, *, step: int | None = None, out: Path | None = None, png: Path | None = None, with_png: bool = True
) -> tuple[Path, Path | None]:
    """Write the HTML page (and the PNG); returns their paths (the PNG's None without matplotlib or with_png)."""
    steps = recorded_steps(run_dir)
    step = steps[-1] if step is None else step
    if step not in steps:
        load_step(run_dir, step)  # raises the one-line error naming the recorded steps
    per_step = [(s, rows, step_summary(rows)) for s in steps for rows in [load_step(run_dir, s)]]
    rows = next(r for s, r, _ in per_step if s == step)
    page = render_page(rows, step=step, run_dir=str(run_dir), steps_table=[(s, m) for s, _, m in per_step])
    out = out or inspect_dir(run_dir) / f"step_{step}.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    if not with_png:
        return out, None
    try:
        import matplotlib  # noqa: F401  (the `plot` extra)
    except ImportError:
        return out, None
    from sposd.inspect.plot import summary_png

    png = png or inspect_dir(run_dir) / "summary.png"
    return out, summary_png(per_step, png, title=str(run_dir))
