#!/usr/bin/env python
"""Compare algorithms on the embedded toy task: held-out accuracy at fixed steps, over seeds, at equal rollouts.

Every (algorithm, seed) is one `sposd train` run (a subprocess, so each gets a fresh vLLM and DeepSpeed) in
OUT/<algo>/seed_<n>/. Runs that finished (summary.json present) are not redone, so an interrupted comparison
resumes. Group methods (GRPO, SSOPD, SDPO, ...) sample `rollouts / group_size` prompts per step, single-rollout
methods (OPSD, PAINT, ...) `rollouts` prompts, so every method sees the same number of rollouts per step. All runs
start from the same warm-started tiny model (model.builtin.seed is not varied); the seed changes the prompt
order and the sampling. Each method runs with its conf/algo/<name>.yaml defaults (the YAMLs say which are the
project's defaults rather than the papers').

Writes OUT/results.json, OUT/table.md and OUT/curves.png (training accuracy, held-out accuracy and mean response
length vs step, mean over seeds with a min-max band), and prints the table: held-out accuracy at the evaluated
steps, the final gain, training accuracy and mean response length over the last 10 steps, and the median step
time, both also relative to GRPO when it is among the methods.

    python scripts/compare_algos.py                              # every method x seeds 0 1 2 (hours on a CPU)
    python scripts/compare_algos.py --algos grpo ssopd --seeds 0 --steps 40 --out /tmp/cmp optim.lr=2e-4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sposd.algos.grpo import COMPOSED

REPO = Path(__file__).resolve().parents[1]

# GRPO and SSOPD first, then the registry's order; DAPO and Dr.GRPO are GRPO variants, not compared here
ALL_ALGOS = ("grpo", "ssopd", *(a for a in COMPOSED if a not in ("grpo", "ssopd", "dapo", "dr_grpo")))


def _compose_group_size(algo: str) -> int:
    from hydra import compose, initialize_config_dir

    from sposd.config import register_configs, register_resolvers, to_object

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_object(compose("train", overrides=[f"algo={algo}"])).algo.group_size


def run_one(algo: str, seed: int, run_dir: Path, *, steps: int, every: int, rollouts: int, extra: list[str]) -> float:
    """Run (or skip, if finished) one training run; returns its wall time in seconds (0 when skipped)."""
    if (run_dir / "summary.json").exists():
        return 0.0
    g = _compose_group_size(algo)
    if rollouts % g:
        raise SystemExit(f"--rollouts {rollouts} is not a multiple of algo={algo}'s group_size {g}")
    cmd = [
        sys.executable,
        "-m",
        "sposd",
        "train",
        f"hydra.run.dir={run_dir}",
        f"algo={algo}",
        f"seed={seed}",
        f"num_steps={steps}",
        f"heldout_every={every}",
        f"prompts_per_step={rollouts // g}",
        "save_final=false",
        "logger=jsonl",
        *extra,
    ]
    t0 = time.perf_counter()
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode:
        raise SystemExit(f"run {algo} seed {seed} failed (exit {r.returncode}); see {log}")
    return time.perf_counter() - t0


def collect(out: Path, algos: list[str], seeds: list[int]) -> dict:
    res: dict = {}
    for algo in algos:
        runs = []
        for seed in seeds:
            d = out / algo / f"seed_{seed}"
            rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            summary = json.loads((d / "summary.json").read_text())
            acc = {0: summary["base_accuracy"]}
            acc.update({r["step"]: r["eval/heldout_accuracy"] for r in rows if "eval/heldout_accuracy" in r})
            runs.append(
                {
                    "seed": seed,
                    "heldout_accuracy": acc,
                    "reward": [r["reward/mean"] for r in rows],
                    "accuracy": [r["reward/accuracy"] for r in rows],
                    "response_len": [r["response/mean_len"] for r in rows],
                    "step_s": statistics.median(r["time/step_s"] for r in rows[1:]) if len(rows) > 1 else None,
                }
            )
        res[algo] = runs
    return res


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(res: dict) -> str:
    steps = sorted({s for runs in res.values() for r in runs for s in r["heldout_accuracy"]})
    head = (
        "| algo | "
        + " | ".join(f"acc@{s}" for s in steps)
        + " | Δ (final − base) | train acc, last 10 steps | resp. len, last 10 steps | len / GRPO | median s/step"
        + " | s/step / GRPO |"
    )
    lines = [head, "|" + "---|" * (len(steps) + 7)]

    def last10(r, key):
        return statistics.mean(r[key][-10:])

    def mean_step(runs):
        xs = [r["step_s"] for r in runs if r["step_s"] is not None]
        return statistics.mean(xs) if xs else float("nan")

    ref = res.get("grpo")
    ref_len = statistics.mean(last10(r, "response_len") for r in ref) if ref else None
    ref_step = mean_step(ref) if ref else None
    for algo, runs in res.items():
        cells = [_mean_sd([r["heldout_accuracy"][s] for r in runs if s in r["heldout_accuracy"]]) for s in steps]
        delta = [r["heldout_accuracy"][steps[-1]] - r["heldout_accuracy"][0] for r in runs]
        train = [last10(r, "accuracy") for r in runs]
        length = [last10(r, "response_len") for r in runs]
        step_s = mean_step(runs)
        rel_len = f"{statistics.mean(length) / ref_len:.2f}" if ref_len else "–"
        rel_step = f"{step_s / ref_step:.2f}" if ref_step else "–"
        lines.append(
            f"| {algo} | " + " | ".join(cells) + f" | {_mean_sd(delta)} | {_mean_sd(train)} | "
            f"{_mean_sd(length)} | {rel_len} | {step_s:.2f} | {rel_step} |"
        )
    return "\n".join(lines)


def plot(res: dict, path: Path, *, smooth: int = 10) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no plot written", file=sys.stderr)
        return False
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.5))
    cmap = plt.get_cmap("tab20")  # one colour per method (the default cycle repeats after 10)
    for k, (algo, runs) in enumerate(res.items()):
        n = min(len(r["accuracy"]) for r in runs)
        curves = []
        for r in runs:
            xs = r["accuracy"][:n]
            curves.append([statistics.mean(xs[max(0, i - smooth + 1) : i + 1]) for i in range(n)])
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        steps = list(range(1, n + 1))
        (line,) = ax1.plot(steps, mean, label=algo, color=cmap(k % 20), linestyle="-" if k < 10 else "--")
        ax1.fill_between(
            steps,
            [min(c[i] for c in curves) for i in range(n)],
            [max(c[i] for c in curves) for i in range(n)],
            color=line.get_color(),
            alpha=0.15,
        )
        lens = [statistics.mean(r["response_len"][i] for r in runs) for i in range(n)]
        ax3.plot(steps, lens, color=line.get_color(), linestyle=line.get_linestyle(), label=algo)
        ev = sorted(set.intersection(*(set(r["heldout_accuracy"]) for r in runs)))
        ys = [[r["heldout_accuracy"][s] for r in runs] for s in ev]
        ax2.plot(
            ev,
            [statistics.mean(y) for y in ys],
            marker="o",
            color=line.get_color(),
            linestyle=line.get_linestyle(),
            label=algo,
        )
        ax2.fill_between(ev, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
    ax1.set(xlabel="step", ylabel=f"training accuracy (rolling mean of {smooth})", title="rollout accuracy")
    ax2.set(xlabel="step", ylabel="held-out accuracy", title="held-out accuracy (toy task)")
    ax3.set(xlabel="step", ylabel="tokens", title="mean response length")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.legend(*ax1.get_legend_handles_labels(), loc="center right", fontsize="small")  # one legend, off the data
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    ap.add_argument("--algos", nargs="+", default=list(ALL_ALGOS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--rollouts", type=int, default=128, help="rollouts per step for every method")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_algos"))
    ap.add_argument("--json", action="store_true", help="print results as one JSON object on the last line")
    args = ap.parse_args()

    for algo in args.algos:
        for seed in args.seeds:
            d = args.out / algo / f"seed_{seed}"
            print(f"[compare] {algo} seed {seed} -> {d}", flush=True)
            wall = run_one(
                algo, seed, d, steps=args.steps, every=args.eval_every, rollouts=args.rollouts, extra=args.overrides
            )
            status = f"done in {wall:.0f} s" if wall else "already finished"
            print(f"[compare]   {status}", flush=True)
    res = collect(args.out, args.algos, args.seeds)
    tab = table(res)
    (args.out / "table.md").write_text(tab + "\n")
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    plotted = plot(res, args.out / "curves.png")
    print(tab)
    print(
        f"[compare] wrote {args.out / 'table.md'}, {args.out / 'results.json'}"
        + (f", {args.out / 'curves.png'}" if plotted else "")
    )
    if args.json:
        print(
            json.dumps(
                {
                    a: {
                        "heldout_accuracy": [r["heldout_accuracy"] for r in runs],
                        "response_len_last10": [statistics.mean(r["response_len"][-10:]) for r in runs],
                        "step_s": [r["step_s"] for r in runs],
                    }
                    for a, runs in res.items()
                }
            )
        )


if __name__ == "__main__":
    main()
