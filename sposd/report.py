"""`sposd report <run or sweep dir>`: a Markdown table of final and best metrics per sweep point, and curves.

A run is any directory below the given one that holds `metrics.jsonl` and `config.yaml` (the run-directory
contract). Runs whose resolved configs differ only in `seed` form one sweep point; the point's label lists the
config values that differ between points (e.g. `algo.name=ssopd, optim.lr=0.0001`). For each point the report
gives, over its seeds, mean ± sample std of each metric's final value (its last logged step) and best value
(its maximum over steps; the minimum for losses), the held-out accuracy before and after training (from
summary.json), the steps reached, and writes next to the runs:

    report.md      the table (also printed)
    report.json    the same numbers, machine-readable
    report_<metric>.png   one plot per metric: mean over seeds per point, with a min-max band
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

# (metric, better) in table order; any logged "eval/..." metric is added after these
BASE_METRICS = [
    ("reward/mean", "max"),
    ("reward/accuracy", "max"),
    ("eval/heldout_accuracy", "max"),
    ("loss/total", "min"),
    ("response/mean_len", "min"),
]
# held-out accuracy before and after training, from each run's summary.json (one value per run: no "best")
SUMMARY_METRICS = [("heldout/base_accuracy", "base_accuracy"), ("heldout/trained_accuracy", "trained_accuracy")]
PLOTTED = ("reward/mean", "loss/total")  # plus every eval/ metric
IGNORED_KEYS = {"seed", "run_dir"}  # differ between runs of one point


@dataclass
class Run:
    path: Path
    config: dict
    rows: list[dict]
    summary: dict = field(default_factory=dict)

    @property
    def seed(self):
        return self.config.get("seed")


def find_runs(root: Path) -> list[Run]:
    """Every run directory at or below root (sorted by path); a metrics.jsonl without config.yaml is skipped."""
    import yaml

    runs = []
    for metrics in sorted(Path(root).rglob("metrics.jsonl")):
        d = metrics.parent
        if not (d / "config.yaml").is_file():
            continue
        rows = []
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
        runs.append(Run(d, yaml.safe_load((d / "config.yaml").read_text()) or {}, rows, summary))
    return runs


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, list) else v
    return out


def _overrides(run: Run) -> dict[str, str] | None:
    """The job's command-line overrides (Hydra's .hydra/overrides.yaml), or None when the run has none."""
    import yaml

    f = run.path / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return None
    out = {}
    for o in yaml.safe_load(f.read_text()) or []:
        key, _, value = str(o).lstrip("+~").partition("=")
        if not key.startswith("hydra"):
            out[key] = value
    return out


def _varying(dicts: list[dict]) -> list[str]:
    keys = sorted({k for d in dicts for k in d if k not in IGNORED_KEYS})
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True, default=str) for d in dicts}) > 1]


def group_points(runs: list[Run]) -> dict[str, list[Run]]:
    """Sweep points: runs with equal configs apart from the seed.

    A point is labelled by what the user varied: the Hydra overrides that differ between runs (seed excluded),
    or, for runs without .hydra/overrides.yaml, the resolved config values that differ (the algorithm's own
    keys are implied by algo.name and left out of the label when the algorithm varies).
    """
    flat = [{k: v for k, v in _flatten(r.config).items() if k not in IGNORED_KEYS} for r in runs]
    overrides = [_overrides(r) for r in runs]
    if all(o is not None for o in overrides):
        shown, labels_from = _varying(overrides), overrides
    else:
        shown, labels_from = _varying(flat), flat
        if "algo.name" in shown:
            shown = ["algo.name"] + [k for k in shown if not k.startswith("algo.")]
    config_varying = _varying(flat)
    points: dict[str, list[Run]] = {}
    for r, f, lab in zip(runs, flat, labels_from, strict=True):
        # the key is the whole config but the seed, so runs that differ in anything else never merge
        key = json.dumps({k: f.get(k) for k in config_varying}, sort_keys=True, default=str)
        label = ", ".join(f"{k}={lab.get(k)}" for k in shown) or str(f.get("algo.name", "run"))
        points.setdefault(key, [label, []])[1].append(r)
    out: dict[str, list[Run]] = {}
    for label, rs in points.values():
        while label in out:  # two configs the shown keys do not tell apart: keep both points
            label += " (2)"
        out[label] = rs
    return out


def _metric_names(runs: list[Run]) -> list[tuple[str, str]]:
    logged = {k for r in runs for row in r.rows for k in row}
    evals = sorted(k for k in logged if k.startswith("eval/") and k != "eval/heldout_accuracy")
    return [(m, b) for m, b in BASE_METRICS if m in logged] + [(m, "max") for m in evals]


def _series(run: Run, metric: str) -> list[tuple[int, float]]:
    return [(row["step"], row[metric]) for row in run.rows if isinstance(row.get(metric), (int, float))]


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarize(points: dict[str, list[Run]]) -> dict:
    """Per point: seeds, steps reached, and for each metric the final and best value over seeds."""
    every = [r for rs in points.values() for r in rs]
    metrics = _metric_names(every)
    from_summary = [(m, key) for m, key in SUMMARY_METRICS if any(key in r.summary for r in every)]
    out: dict = {}
    for label, runs in points.items():
        entry: dict = {
            "runs": [str(r.path) for r in runs],
            "seeds": [r.seed for r in runs],
            "steps": [max((row["step"] for row in r.rows), default=0) for r in runs],
            "metrics": {},
        }
        for metric, better in metrics:
            finals, bests = [], []
            for r in runs:
                s = _series(r, metric)
                if s:
                    finals.append(s[-1][1])
                    bests.append((max if better == "max" else min)(v for _, v in s))
            if finals:
                fm, fs = _mean_std(finals)
                bm, bs = _mean_std(bests)
                entry["metrics"][metric] = {
                    "final_mean": fm,
                    "final_std": fs,
                    "best_mean": bm,
                    "best_std": bs,
                    "better": better,
                    "n": len(finals),
                }
        for metric, key in from_summary:
            values = [float(r.summary[key]) for r in runs if isinstance(r.summary.get(key), (int, float))]
            if values:
                fm, fs = _mean_std(values)
                entry["metrics"][metric] = {"final_mean": fm, "final_std": fs, "n": len(values)}
        out[label] = entry
    for label, runs in points.items():  # spec 0.8: final / best per benchmark / best macro, per seed
        from sposd.evals.results import checkpoint_views

        views = [v for r in runs if (v := checkpoint_views(r.rows)) is not None]
        if views:
            out[label]["checkpoints"] = views
    return {"points": out, "metrics": [m for m, _ in from_summary] + [m for m, _ in metrics]}


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.4g}" if std is None or math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def markdown(summary: dict) -> str:
    """One row per sweep point: seeds, steps, then final | best of each metric (mean ± std over seeds)."""
    metrics = summary["metrics"]
    head = ["sweep point", "seeds", "steps"]
    single = {m for m, _ in SUMMARY_METRICS}  # one value per run: a single column
    for m in metrics:
        head += [m] if m in single else [f"{m} final", f"{m} best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, e in summary["points"].items():
        cells = [label, str(len(e["seeds"])), "/".join(str(s) for s in sorted(set(e["steps"])))]
        for m in metrics:
            v = e["metrics"].get(m)
            if m in single:
                cells.append("–" if v is None else _fmt(v["final_mean"], v["final_std"]))
            else:
                cells += (
                    ["–", "–"]
                    if v is None
                    else [_fmt(v["final_mean"], v["final_std"]), _fmt(v["best_mean"], v["best_std"])]
                )
        lines.append("| " + " | ".join(cells) + " |")
    lines += _checkpoint_lines(summary)
    lines.append("")
    lines.append(
        "final = the last logged step; best = the maximum over steps (minimum for loss and length); "
        "heldout/* = held-out accuracy before and after training (summary.json); mean ± sample std over seeds."
    )
    return "\n".join(lines) + "\n"


CHECKPOINT_READINGS = (
    ("final", "final (last step)"),
    ("best_per_benchmark", "best per benchmark over checkpoints (the papers' convention, optimistic)"),
    ("best_macro", "best macro (one checkpoint)"),
)


def _checkpoint_lines(summary: dict) -> list[str]:
    """Evaluations read three ways (spec/ALGORITHMS.md 0.8), avg@k mean ± std over seeds, one row per reading."""
    points = {k: e["checkpoints"] for k, e in summary["points"].items() if e.get("checkpoints")}
    if not points:
        return []
    benches = sorted({b for vs in points.values() for v in vs for b in v["best_per_benchmark"]} - {"macro"})
    cols = [*benches, "macro"]
    lines = ["", "Evaluations over checkpoints (avg@k; spec 0.8: differences under ~2 points need several seeds):", ""]
    lines += ["| sweep point | reading | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for label, views in points.items():
        for key, name in CHECKPOINT_READINGS:
            cells = []
            for c in cols:
                vals = [v[key][c] for v in views if v[key].get(c) is not None]
                vals = [x["avg@k"] if isinstance(x, dict) else x for x in vals]
                cells.append(_fmt(*_mean_std(vals)) if vals else "–")
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    return lines


def plot(points: dict[str, list[Run]], metric: str, path: Path) -> bool:
    """Mean over seeds per point vs step, with a min-max band. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drew = False
    for label, runs in points.items():
        by_step: dict[int, list[float]] = {}
        for r in runs:
            for step, v in _series(r, metric):
                by_step.setdefault(step, []).append(v)
        if not by_step:
            continue
        steps = sorted(by_step)
        (line,) = ax.plot(
            steps, [statistics.mean(by_step[s]) for s in steps], label=label, marker="." if len(steps) < 30 else None
        )
        if len(runs) > 1:
            ax.fill_between(
                steps,
                [min(by_step[s]) for s in steps],
                [max(by_step[s]) for s in steps],
                color=line.get_color(),
                alpha=0.15,
            )
        drew = True
    if drew:
        ax.set(xlabel="step", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drew


def report(root: Path, *, out_dir: Path | None = None) -> dict:
    """Build the report for a run or sweep directory; returns {"table", "summary", "plots"}.

    Raises:
        FileNotFoundError: no run directory (metrics.jsonl + config.yaml) at or below root.
    """
    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"{root} holds no run directory (one with metrics.jsonl and config.yaml)")
    out_dir = Path(out_dir) if out_dir is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    points = group_points(runs)
    summary = summarize(points)
    table = markdown(summary)
    from sposd.logging import write_atomic

    write_atomic(out_dir / "report.md", table)
    write_atomic(out_dir / "report.json", json.dumps(summary, indent=1) + "\n")
    plotted = []
    for metric in [m for m in summary["metrics"] if m in PLOTTED or m.startswith("eval/")]:
        path = out_dir / f"report_{metric.replace('/', '_').replace('@', 'at')}.png"
        if plot(points, metric, path):
            plotted.append(str(path))
    return {"table": table, "summary": summary, "plots": plotted}


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="sposd report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dir", type=Path, help="a run directory or a sweep (multirun) directory")
    ap.add_argument("--out", type=Path, default=None, help="where report.md / report.json / PNGs go (default: DIR)")
    args = ap.parse_args(argv)
    try:
        res = report(args.dir, out_dir=args.out)
    except FileNotFoundError as e:
        print(f"sposd: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(res["table"], end="")
    where = args.out or args.dir
    print(
        f"\nwrote {where / 'report.md'}, {where / 'report.json'}" + "".join(f", {Path(p).name}" for p in res["plots"])
    )
