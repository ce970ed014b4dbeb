#!/usr/bin/env python
"""A pre-registered study on the toy task: does SSOPD beat GRPO? (every run goes through `sposd train`)

The grid (arms x data conditions x seeds x budget, and the SSOPD ablations) is declared in GRIDS below, before any
result is looked at, and copied verbatim into the results JSON. Each run is one `sposd train` subprocess in
OUT/<condition>/<arm or ablation label>/seed_<n>/ (one tree for every grid, so the cells the
ablations share with the main grid run once) with `hardware.num_threads=1`, at most `--jobs` at once, held-out accuracy
every `eval_every` steps (`heldout_every`, `data.num_heldout` problems x `heldout_samples` samples, the seed's
held-out draw: arms with the same seed are scored on the same problems, so differences are paired by seed).

Resumable: a run whose summary.json exists is finished and kept; a run directory without it (killed, crashed) is
partial and is removed and run again. Re-running the same command finishes a study.

Writes results/study_<name>.json (the grid, every run's held-out accuracy at each evaluated step, and the paired
comparisons), results/study_<name>.md (the tables) and results/study_<name>_<condition>.png (curves). For each arm
and condition, against GRPO on the same condition and seeds: the mean paired difference (arm - GRPO) with a 95%
t-interval over seeds, at the final step and at each run's best evaluated step (the papers' "best checkpoint",
spec 0.8; selected on the held-out split itself, so optimistic for every arm alike).

    python scripts/study.py --name main --jobs 2              # run (or finish) the main grid, then report
    python scripts/study.py --name ablations --jobs 2
    python scripts/study.py --name main --report-only         # tables and curves of whatever has finished
    python scripts/study.py --name main --dry-run             # list the runs and their commands
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The budget every run of a grid shares: steps x rollouts per step (group methods sample rollouts / G prompts,
# single-rollout methods rollouts prompts), held-out evaluations every eval_every steps.
BUDGET = {"steps": 150, "rollouts": 128, "eval_every": 50}

# The arms: those that need no reference solution on every condition, those that read one on own / foreign.
ARMS_BY_CONDITION = [
    *({"arm": a, "condition": c} for c in ("own", "foreign", "none") for a in ("grpo", "ssopd", "uopsd", "sdpo")),
    *({"arm": a, "condition": c} for c in ("own", "foreign") for a in ("opsd", "paint")),
]

# The grids on the slip warm start (v2 and its follow-ups): arms that read no reference run once for every condition.
SLIP_SHARED = {"share_conditions": True, "overrides": ["model.builtin.slip_frac=0.3"]}
LONG_BUDGET = {**BUDGET, "steps": 300}  # v2's follow-ups at twice its steps

GRIDS: dict[str, dict] = {
    "main": {
        "question": "held-out accuracy of each self-distillation arm minus GRPO's, paired by seed, per data condition",
        "cells": ARMS_BY_CONDITION,
        "seeds": [0, 1, 2, 3, 4],
        "budget": BUDGET,
        "baseline": "grpo",
        "first": ["grpo", "ssopd"],
        # pinned when the default warm start changed (model.builtin.slip_frac 0 -> 0.3): the toy this grid ran on
        "overrides": ["model.builtin.slip_frac=0"],
    },
    "ablations": {
        "question": "SSOPD's knobs on foreign-style references (each row changes one knob of the ssopd defaults)",
        "cells": [
            {"arm": "grpo", "condition": "foreign"},
            {"arm": "ssopd", "condition": "foreign"},  # defaults: lambda 1, num_wrong one, fkl + element clip, current
            {"arm": "ssopd", "condition": "foreign", "label": "lambda=0.1", "overrides": ["algo.distill.coef=0.1"]},
            {"arm": "ssopd", "condition": "foreign", "label": "lambda=0.5", "overrides": ["algo.distill.coef=0.5"]},
            {"arm": "ssopd", "condition": "foreign", "label": "num_wrong=all",
             "overrides": ["algo.distill.num_wrong=all"]},
            {"arm": "ssopd", "condition": "foreign", "label": "jsd",
             "overrides": ["algo.distill.divergence=jsd", "algo.distill.beta=0.5", "algo.distill.clip_max=null"]},
            {"arm": "ssopd", "condition": "foreign", "label": "teacher=ema", "overrides": ["algo.distill.teacher=ema"]},
        ],
        "seeds": [0, 1, 2],
        "budget": BUDGET,
        "baseline": "grpo",
        "overrides": ["model.builtin.slip_frac=0"],  # as "main"
    },
    # Declared 2026-12-02 18:45 UTC, after GRPO pilots on the slip warm start (seeds 0 and 1: it gains over its start)
    # and before any self-distillation run on it. The toy: the warm start imitates noisy demonstrations (30% of its
    # student-prompt solutions carry one arithmetic slip, data/toy.py slipped_solution), so RL has a habit to remove
    # that generalises across problems. Arms that read no reference solution (grpo, ssopd, uopsd, sdpo) run the same
    # experiment under every solution_style: they run once (directory "any") and are reported under each condition.
    "v2": {
        "question": "held-out accuracy of each self-distillation arm minus GRPO's, paired by seed, per data condition "
                    "(the slip warm start)",
        "cells": ARMS_BY_CONDITION,
        "seeds": [0, 1, 2, 3, 4],
        "budget": BUDGET,
        "baseline": "grpo",
        "first": ["grpo", "ssopd"],
        "tree": "v2",
        **SLIP_SHARED,
    },
    "v2_ablations": {
        "question": "SSOPD's knobs on the slip warm start (each row changes one knob of the ssopd defaults; SSOPD "
                    "reads no reference, so the data condition does not apply)",
        "cells": [
            {"arm": "grpo", "condition": "own"},
            {"arm": "ssopd", "condition": "own"},  # defaults: lambda 1, num_wrong one, fkl + element clip, current
            {"arm": "ssopd", "condition": "own", "label": "lambda=0.1", "overrides": ["algo.distill.coef=0.1"]},
            {"arm": "ssopd", "condition": "own", "label": "lambda=0.5", "overrides": ["algo.distill.coef=0.5"]},
            {"arm": "ssopd", "condition": "own", "label": "num_wrong=all", "overrides": ["algo.distill.num_wrong=all"]},
            {"arm": "ssopd", "condition": "own", "label": "jsd",
             "overrides": ["algo.distill.divergence=jsd", "algo.distill.beta=0.5", "algo.distill.clip_max=null"]},
            {"arm": "ssopd", "condition": "own", "label": "clip=off", "overrides": ["algo.distill.clip_max=null"]},
            {"arm": "ssopd", "condition": "own", "label": "teacher=ema", "overrides": ["algo.distill.teacher=ema"]},
        ],
        "seeds": [0, 1, 2],
        "budget": BUDGET,
        "baseline": "grpo",
        "tree": "v2",
        **SLIP_SHARED,
    },
    # Declared 2026-12-03 10:40 UTC, after v2 (150 steps): GRPO and SSOPD gained ~3.4 held-out points there, short of
    # the demo's 5, while their training reward was still rising at step 150 (0.21 in the first 30 steps, 0.26 in the
    # last 30; the train split, not the held-out one). The one budget tried for `make demo`: 300 steps, which fits in
    # 10 minutes on 2 cores. Adopted as the demo's default if SSOPD gains 5 points or more over seeds 0-2.
    "v2_long": {
        "question": "SSOPD and GRPO at twice v2's budget (300 steps): the demo's budget",
        "cells": [{"arm": "grpo", "condition": "own"}, {"arm": "ssopd", "condition": "own"}],
        "seeds": [0, 1, 2],
        "budget": LONG_BUDGET,
        "baseline": "grpo",
        "tree": "v2_long",
        **SLIP_SHARED,
    },
    # Declared 2026-12-03 11:55 UTC, after v2_long: GRPO at 300 steps gained 5 points or more on each of seeds 0-2
    # (SSOPD did not), so it becomes the demo's method if its gain holds on two seeds it has not seen (mean >= 5).
    "v2_long_confirm": {
        "question": "GRPO at 300 steps on fresh seeds (3-4): does the demo's gain hold up?",
        "cells": [{"arm": "grpo", "condition": "own"}],
        "seeds": [3, 4],
        "budget": LONG_BUDGET,
        "baseline": "grpo",
        "tree": "v2_long",
        **SLIP_SHARED,
    },
    # Declared 2026-12-03 11:45 UTC, after v2_ablations: num_wrong=all (distil into every wrong answer of a mixed
    # group, not only the longest) gained +6.6 / +5.5 / +5.0 on seeds 0-2, the only knob at 5 points or more on each
    # seed. That was picked on the held-out split, so it is tested here on seeds it has not seen (3-7: other held-out
    # problems, other rollouts), paired with GRPO on the same seeds. Adopted for the demo only if its mean gain over
    # seeds 3-7 is 5 points or more; its difference to GRPO is reported either way.
    "v2_confirm": {
        "question": "SSOPD with num_wrong=all on fresh seeds (3-7): does its ablation gain hold up?",
        "cells": [
            {"arm": "grpo", "condition": "own"},
            {"arm": "ssopd", "condition": "own", "label": "num_wrong=all", "overrides": ["algo.distill.num_wrong=all"]},
        ],
        "seeds": [3, 4, 5, 6, 7],
        "budget": BUDGET,
        "baseline": "grpo",
        "tree": "v2",
        **SLIP_SHARED,
    },
}

# two-sided 95% Student-t quantiles t_{0.975, df}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
        25: 2.060, 30: 2.042}


def t_quantile(df: int) -> float:
    """t_{0.975, df} (the largest tabulated df at or below df; 1.96 past 30)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 paired values (df >= 1), got df={df}")
    if df > 30:
        return 1.960
    return T975[max(k for k in T975 if k <= df)]


def paired_interval(diffs: list[float]) -> dict:
    """Mean of paired differences and its 95% t-interval: mean +- t_{0.975, n-1} * sd / sqrt(n)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None}
    sd = statistics.stdev(diffs)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def cell_label(cell: dict) -> str:
    return cell.get("label", cell["arm"]) if cell.get("label") else cell["arm"]


def run_dir(out: Path, cell: dict, seed: int) -> Path:
    """OUT/<condition>/<label>/seed_<n>; a cell marked `shared` (its arm reads no reference solution, so every
    condition is the same experiment) runs once, in OUT/any/<label>/seed_<n>."""
    cond = "any" if cell.get("shared") else cell["condition"]
    return out / cond / cell_label(cell).replace("=", "_") / f"seed_{seed}"


_READS: dict[tuple, bool] = {}


def reads_reference(arm: str, overrides: tuple[str, ...] = ()) -> bool:
    """Whether algo=`arm` (with `overrides`) builds a teacher or scoring context from the reference solution, i.e.
    whether data.solution_style changes the run at all."""
    key = (arm, *overrides)
    if key not in _READS:
        from sposd.algos.config import REFERENCE_CONTEXTS
        from sposd.plan import compose_train_cfg

        algo = compose_train_cfg([f"algo={arm}", *overrides]).algo
        _READS[key] = bool((algo.distill.enabled and algo.distill.context in REFERENCE_CONTEXTS)
                           or algo.adv_mod.needs_solution)
    return _READS[key]


def grid_cells(grid: dict) -> list[dict]:
    """The grid's cells; with `share_conditions`, each marked `shared` when its arm reads no reference."""
    if not grid.get("share_conditions"):
        return list(grid["cells"])
    return [dict(c, shared=not reads_reference(c["arm"], tuple(c.get("overrides", [])))) for c in grid["cells"]]


def run_state(d: Path) -> str:
    """"done" (summary.json written), "partial" (the directory exists without it) or "todo"."""
    if (d / "summary.json").exists():
        return "done"
    return "partial" if d.exists() else "todo"


def group_size(arm: str) -> int:
    from sposd.plan import compose_train_cfg

    return compose_train_cfg([f"algo={arm}"]).algo.group_size


def train_command(cell: dict, seed: int, d: Path, budget: dict, g: int, extra: list[str]) -> list[str]:
    """The `sposd train` command of one run."""
    if budget["rollouts"] % g:
        raise SystemExit(f"rollouts {budget['rollouts']} is not a multiple of algo={cell['arm']}'s group_size {g}")
    return [
        sys.executable, "-m", "sposd", "train",
        f"hydra.run.dir={d}", f"algo={cell['arm']}",
        f"data.solution_style={'own' if cell.get('shared') else cell['condition']}", f"seed={seed}",
        f"num_steps={budget['steps']}", f"heldout_every={budget['eval_every']}",
        f"prompts_per_step={budget['rollouts'] // g}", "save_final=false", "logger=jsonl",
        "hardware.num_threads=1", *cell.get("overrides", []), *extra,
    ]  # fmt: skip


def plan_runs(grid: dict, out: Path) -> list[tuple[dict, int, Path]]:
    """Every (cell, seed, directory) in the order they run. The grid's `first` arms (the primary comparison) come
    first, condition by condition, seed by seed (GRPO and SSOPD of seed 0, of seed 1, ...), so a partial study
    answers the main question on the most seeds it can; then every other cell, seed-major."""
    first = set(grid.get("first", []))
    cells = grid_cells(grid)
    primary = [c for c in cells if c["arm"] in first and not c.get("label")]
    conditions = list(dict.fromkeys(c["condition"] for c in primary))
    runs = [(c, s, run_dir(out, c, s)) for cond in conditions for s in grid["seeds"] for c in primary
            if c["condition"] == cond]
    rest = [c for c in cells if c not in primary]
    return runs + [(c, s, run_dir(out, c, s)) for s in grid["seeds"] for c in rest]


def unique_runs(runs: list[tuple[dict, int, Path]]) -> list[tuple[dict, int, Path]]:
    """The runs to execute: one per directory (a shared cell appears under every condition but runs once)."""
    seen: set[Path] = set()
    return [r for r in runs if not (r[2] in seen or seen.add(r[2]))]


def execute(runs: list[tuple[dict, int, Path]], budget: dict, *, jobs: int, extra: list[str], nice: int) -> None:
    """Run the unfinished runs, at most `jobs` at once; partial directories are removed first."""
    sizes: dict[str, int] = {}
    todo = []
    for cell, seed, d in runs:
        state = run_state(d)
        if state == "done":
            continue
        if state == "partial":
            print(f"[study] removing partial run {d}", flush=True)
            shutil.rmtree(d)
        g = sizes.setdefault(cell["arm"], group_size(cell["arm"]))
        todo.append((cell, seed, d, train_command(cell, seed, d, budget, g, extra)))
    print(f"[study] {len(runs) - len(todo)} of {len(runs)} runs finished, {len(todo)} to run, {jobs} at once",
          flush=True)
    running: list[tuple[subprocess.Popen, Path, float, object]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    while todo or running:
        while todo and len(running) < jobs:
            cell, seed, d, cmd = todo.pop(0)
            d.parent.mkdir(parents=True, exist_ok=True)
            log = open(d.parent / f"seed_{seed}.log", "w")
            p = subprocess.Popen(["nice", "-n", str(nice), *cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=REPO)
            running.append((p, d, time.perf_counter(), log))
            print(f"[study] started {d}", flush=True)
        time.sleep(2)
        for item in list(running):
            p, d, t0, log = item
            if p.poll() is None:
                continue
            running.remove(item)
            log.close()
            status = "done" if p.returncode == 0 else f"FAILED (exit {p.returncode}; see {log.name})"
            print(f"[study] {d}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)


def read_run(d: Path) -> dict | None:
    """Held-out accuracy by step (0 = base) and wall facts of one finished run; None when unfinished."""
    if run_state(d) != "done":
        return None
    summary = json.loads((d / "summary.json").read_text())
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
    acc = {0: summary["base_accuracy"]}
    acc.update({r["step"]: r["eval/heldout_accuracy"] for r in rows if "eval/heldout_accuracy" in r})
    steps = [r["time/step_s"] for r in rows if "time/step_s" in r]
    return {
        "heldout_accuracy": {str(k): v for k, v in sorted(acc.items())},
        "train_accuracy_first10": statistics.fmean(r["reward/accuracy"] for r in rows[:10]) if rows else None,
        "train_accuracy_last10": statistics.fmean(r["reward/accuracy"] for r in rows[-10:]) if rows else None,
        "median_step_s": statistics.median(steps) if steps else None,
    }


def collect(grid: dict, out: Path) -> dict:
    """{condition: {label: {seed: run facts}}} of the finished runs."""
    res: dict = {}
    for cell, seed, d in plan_runs(grid, out):
        run = read_run(d)
        if run is not None:
            res.setdefault(cell["condition"], {}).setdefault(cell_label(cell), {})[str(seed)] = run
    return res


def final_and_best(run: dict) -> tuple[float, float]:
    """(accuracy at the last evaluated step, best accuracy over evaluated steps after 0)."""
    acc = {int(k): v for k, v in run["heldout_accuracy"].items()}
    trained = {k: v for k, v in acc.items() if k > 0} or acc
    return trained[max(trained)], max(trained.values())


def compare(res: dict, baseline: str) -> list[dict]:
    """Per condition and arm: base / final / best accuracy over seeds and the paired difference to the baseline."""
    rows = []
    for cond, arms in res.items():
        base_runs = arms.get(baseline, {})
        for label, runs in arms.items():
            row = {"condition": cond, "arm": label, "seeds": sorted(runs, key=int)}
            fb = {s: final_and_best(r) for s, r in runs.items()}
            row["base"] = statistics.fmean(r["heldout_accuracy"]["0"] for r in runs.values())
            row["final"] = statistics.fmean(f for f, _ in fb.values())
            row["best"] = statistics.fmean(b for _, b in fb.values())
            row["gain_final"] = paired_interval([fb[s][0] - r["heldout_accuracy"]["0"] for s, r in runs.items()])
            if label != baseline:
                shared = sorted(set(runs) & set(base_runs), key=int)
                if shared:
                    ref = {s: final_and_best(base_runs[s]) for s in shared}
                    row["vs_baseline_final"] = paired_interval([fb[s][0] - ref[s][0] for s in shared])
                    row["vs_baseline_best"] = paired_interval([fb[s][1] - ref[s][1] for s in shared])
            rows.append(row)
    return rows


def _ci(iv: dict | None) -> str:
    if not iv:
        return "–"
    if iv["low"] is None:
        return f"{iv['mean']:+.3f} (n=1)"
    return f"{iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def markdown(name: str, grid: dict, rows: list[dict], n_done: int, n_all: int) -> str:
    base = grid["baseline"]
    b = grid["budget"]
    lines = [
        f"# Study `{name}`: {grid['question']}",
        "",
        f"Budget: {b['steps']} steps x {b['rollouts']} rollouts per step, held-out accuracy every {b['eval_every']} "
        f"steps. Runs finished: {n_done} of {n_all}"
        + ("." if n_done == n_all else f" (PARTIAL: `python scripts/study.py --name {name} --jobs 2` finishes it)."),
        "Intervals: mean paired difference over seeds with a 95% t-interval.",
        "",
        f"| condition | arm | seeds | base | final | best | gain (final - base) | {base} diff, final | "
        f"{base} diff, best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['arm']} | {len(r['seeds'])} | {r['base']:.3f} | {r['final']:.3f} | "
            f"{r['best']:.3f} | {_ci(r['gain_final'])} | {_ci(r.get('vs_baseline_final'))} | "
            f"{_ci(r.get('vs_baseline_best'))} |"
        )
    return "\n".join(lines) + "\n"


def plot(res: dict, prefix: Path) -> list[Path]:
    """One PNG per condition: held-out accuracy vs step, mean over seeds (min-max band) per arm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no curves written", file=sys.stderr)
        return []
    paths = []
    for cond, arms in res.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, runs in arms.items():
            steps = sorted(set.intersection(*({int(k) for k in r["heldout_accuracy"]} for r in runs.values())))
            ys = [[r["heldout_accuracy"][str(s)] for r in runs.values()] for s in steps]
            (line,) = ax.plot(steps, [statistics.fmean(y) for y in ys], marker="o", label=f"{label} (n={len(runs)})")
            ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.12)
        ax.set(xlabel="step", ylabel="held-out accuracy", title=f"solution_style={cond}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = Path(f"{prefix}_{cond}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def report(name: str, grid: dict, out: Path, results: Path) -> dict:
    runs = unique_runs(plan_runs(grid, out))
    res = collect(grid, out)
    n_done = sum(run_state(d) == "done" for _, _, d in runs)
    rows = compare(res, grid["baseline"])
    results.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "grid": grid,
        "finished": n_done,
        "planned": len(runs),
        "partial": n_done < len(runs),
        "unfinished": [str(d.relative_to(out)) for _, _, d in runs if run_state(d) != "done"],
        "runs": res,
        "comparisons": rows,
    }
    (results / f"study_{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(name, grid, rows, n_done, len(runs))
    (results / f"study_{name}.md").write_text(md)
    pngs = plot(res, results / f"study_{name}")
    print(md)
    print(f"[study] wrote {results / f'study_{name}.json'}, {results / f'study_{name}.md'}"
          + "".join(f", {p}" for p in pngs))
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (recorded in the JSON)")
    ap.add_argument("--name", choices=sorted(GRIDS), default="main")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (each with hardware.num_threads=1)")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "study")
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    grid = dict(GRIDS[args.name], extra_overrides=args.overrides)
    # one tree per toy (the grid's `tree`): a cell two grids of it share (grpo / ssopd seeds 0-2) runs once
    out = args.out / grid.get("tree", "")
    extra = [*grid.get("overrides", []), *args.overrides]
    runs = unique_runs(plan_runs(grid, out))
    if args.dry_run:
        sizes = {a: group_size(a) for a in {cell["arm"] for cell, _, _ in runs}}
        for cell, seed, d in runs:
            cmd = train_command(cell, seed, d, grid["budget"], sizes[cell["arm"]], extra)
            print(run_state(d), "sposd", " ".join(cmd[3:]))
        return
    if not args.report_only:
        t0 = time.perf_counter()
        execute(runs, grid["budget"], jobs=args.jobs, extra=extra, nice=args.nice)
        print(f"[study] wall {time.perf_counter() - t0:.0f} s", flush=True)
    report(args.name, grid, out, args.results)


if __name__ == "__main__":
    main()
