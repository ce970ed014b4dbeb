#!/usr/bin/env python
"""The embedded default (`make demo` = `sposd train`) over several seeds: held-out accuracy before and after, and wall.

Each seed is one plain `sposd train seed=N` (the demo's own settings, all cores), run one after the other so their
wall times are comparable; a seed whose summary.json exists is kept (resumable). Prints a table, the mean gain with
a 95% t-interval over seeds, and a JSON line last; writes results/demo_seeds.json.

    python scripts/demo_seeds.py                       # seeds 0 1 2
    python scripts/demo_seeds.py --seeds 0 1 2 3 4 algo=grpo --out runs/demo_grpo --name demo_seeds_grpo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from study import paired_interval  # noqa: E402 (a sibling script)


def run_seed(seed: int, d: Path, overrides: list[str]) -> dict:
    """One `sposd train` of the demo with this seed (skipped when finished); its accuracies and wall seconds."""
    summary = d / "summary.json"
    wall = None
    if not summary.exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sposd", "train", f"seed={seed}", f"hydra.run.dir={d}", *overrides]
        t0 = time.perf_counter()
        with open(d.parent / f"seed_{seed}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
        wall = time.perf_counter() - t0
        if rc != 0 or not summary.exists():
            raise SystemExit(f"seed {seed}: sposd train exited {rc}; see {d.parent / f'seed_{seed}.log'}")
        (d / "wall_s.txt").write_text(f"{wall:.1f}\n")
    elif (d / "wall_s.txt").exists():
        wall = float((d / "wall_s.txt").read_text())
    s = json.loads(summary.read_text())
    return {"seed": seed, "base": s["base_accuracy"], "trained": s["trained_accuracy"], "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every seed (none = the demo itself)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo_seeds")
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--name", default="demo_seeds")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args(argv)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args.out / f"seed_{seed}", args.overrides))
        r = rows[-1]
        wall = f"{r['wall_s']:.0f} s" if r["wall_s"] is not None else "?"
        print(f"seed {seed}: held-out {r['base']:.3f} -> {r['trained']:.3f} ({r['trained'] - r['base']:+.3f}), "
              f"wall {wall}", flush=True)
    gain = paired_interval([r["trained"] - r["base"] for r in rows])
    walls = [r["wall_s"] for r in rows if r["wall_s"] is not None]
    doc = {"overrides": args.overrides, "seeds": rows, "gain": gain, "max_wall_s": max(walls) if walls else None}
    if gain["low"] is not None:
        print(f"mean gain {gain['mean']:+.3f}, 95% t-interval [{gain['low']:+.3f}, {gain['high']:+.3f}] over "
              f"{gain['n']} seeds; longest wall {doc['max_wall_s'] or float('nan'):.0f} s")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
