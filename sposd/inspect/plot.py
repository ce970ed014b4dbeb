"""A PNG across the recorded steps of a run: where the divergence mass sits along the completion (share per tenth
of the relative position t / n, one line per step, later steps darker) and the fraction of clipped tokens and the
top-5% mass per step."""

from __future__ import annotations

from pathlib import Path


def summary_png(per_step: list[tuple[int, list[dict], dict]], out: Path, *, title: str = "") -> Path:
    """Write the figure to `out`.

    Args:
        per_step: (step, its rows, its `step_summary`) for every recorded step, ascending.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sposd.inspect.records import mass_by_relative_position

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    cmap = plt.get_cmap("viridis")
    bins = 10
    centres = [(i + 0.5) / bins for i in range(bins)]
    for k, (step, rows, _) in enumerate(per_step):
        if rows:
            shade = cmap(k / max(len(per_step) - 1, 1))
            left.plot(
                centres, mass_by_relative_position(rows, bins), marker="o", ms=3, color=shade, label=f"step {step}"
            )
    left.set_xlabel("relative position in the completion (t / n)")
    left.set_ylabel("share of the step's summed |D_t|")
    left.set_title("where the distillation signal lands")
    if len(per_step) <= 8:
        left.legend(fontsize=8)
    steps = [s for s, _, _ in per_step]
    right.plot(steps, [m["clipped_frac"] for _, _, m in per_step], marker="o", label="fraction of tokens clipped")
    right.plot(steps, [m["top5_mass"] for _, _, m in per_step], marker="s", label="|D_t| mass on the top 5% of tokens")
    right.set_xlabel("step")
    right.set_ylim(0, 1.02)
    right.set_title("clip and concentration per step")
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
