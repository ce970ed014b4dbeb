#!/usr/bin/env python
"""Step-time breakdown of a training run (default: the embedded default): rollout / learn / sync / other.

Runs `sposd train` in-process with the given Hydra overrides, then reads the run's metrics.jsonl and prints the
mean share of each phase over the steps after the first (warm-up). "other" is everything not in rollout,
learn or sync: verification, advantage computation, collation, logging.

    python scripts/bench_step.py                         # embedded default, 20 steps
    python scripts/bench_step.py num_steps=30 algo=dapo --json
    python scripts/bench_step.py --startup               # also: `sposd train` start-up time (warm caches)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for `sposd train`")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument(
        "--startup",
        action="store_true",
        help="also time `sposd train num_steps=0` (start-up and teardown, no step) twice: a first run warms the "
        "caches (warm-started model, compiled ops), the second is reported",
    )
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sposd.config import register_configs, register_resolvers, to_object
    from sposd.train import train

    register_resolvers()
    register_configs()
    overrides = ["num_steps=20", "heldout_eval=false", "save_final=false", *args.overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    tcfg = to_object(cfg)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_step_"))
    train(tcfg, run_dir, resolved_config=OmegaConf.to_container(cfg, resolve=True))

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    if not rows:
        sys.exit("need at least 2 steps")
    mean = {
        k: statistics.mean(r[k] for r in rows)
        for k in ("time/step_s", "time/rollout_s", "time/learn_s", "time/sync_s", "time/verify_s")
    }
    step = mean["time/step_s"]
    out = {
        "step_s": step,
        "rollout_frac": mean["time/rollout_s"] / step,
        "learn_frac": mean["time/learn_s"] / step,
        "sync_frac": mean["time/sync_s"] / step,
        "verify_frac": mean["time/verify_s"] / step,
        "steps_measured": len(rows),
        "overrides": overrides,
    }
    out["other_frac"] = 1.0 - out["rollout_frac"] - out["learn_frac"] - out["sync_frac"]
    if all("time/step_cpu_s" in r for r in rows):
        out["step_cpu_s"] = statistics.mean(r["time/step_cpu_s"] for r in rows)
    out["learn_s"] = mean["time/learn_s"]
    # medians resist the 10x outliers a busy 2-core machine produces when another process takes a core
    out["step_s_median"] = statistics.median(r["time/step_s"] for r in rows)
    out["learn_s_median"] = statistics.median(r["time/learn_s"] for r in rows)
    if all("time/teacher_fwd_s" in r for r in rows):
        out["teacher_fwd_s"] = statistics.mean(r["time/teacher_fwd_s"] for r in rows)
        out["teacher_fwd_s_median"] = statistics.median(r["time/teacher_fwd_s"] for r in rows)
    if all("mem/learn_peak_gb" in r for r in rows):  # learner step's peak above what was resident before it
        out["learn_peak_gb"] = max(r["mem/learn_peak_gb"] for r in rows)
    ckpt = [r["time/checkpoint_s"] for r in rows if "time/checkpoint_s" in r]  # with train.checkpoint.every=N
    if ckpt:
        out["checkpoint_s"] = statistics.median(ckpt)
    if args.startup:
        out["startup_s"] = [startup_seconds(args.overrides) for _ in range(2)]
        print(f"`sposd train num_steps=0` wall time: {out['startup_s'][0]:.1f} s, then {out['startup_s'][1]:.1f} s "
              "(warm caches)")  # fmt: skip
    # peak resident memory of this process (learner + in-process vLLM + verifier parent), for comparing algorithms
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\nstep time (mean over {len(rows)} steps after the first): {step:.3f} s "
        f"(median {out['step_s_median']:.3f} s, learn median {out['learn_s_median']:.3f} s)"
    )
    for k in ("rollout", "learn", "sync", "other"):
        print(f"  {k:<8} {out[k + '_frac'] * 100:5.1f}%  {out[k + '_frac'] * step:.3f} s")
    print(f"  (other includes verify: {out['verify_frac'] * 100:.1f}%)")
    if "teacher_fwd_s" in out:
        print(f"  teacher forward passes: {out['teacher_fwd_s']:.3f} s/step (inside learn)")
    if "learn_peak_gb" in out:
        print(f"learner step peak memory above resident (max over steps): {out['learn_peak_gb'] * 1024:.1f} MB")
    if "checkpoint_s" in out:
        print(f"checkpoint write (median of {len(ckpt)}): {out['checkpoint_s']:.3f} s")
    if "step_cpu_s" in out:
        print(f"CPU time of the process: {out['step_cpu_s']:.3f} s/step (all threads)")
    print(f"peak RSS of the process: {out['peak_rss_gb']:.2f} GB")
    if args.json:
        print(json.dumps(out))


def startup_seconds(overrides: list[str]) -> float:
    """Wall seconds of a `sposd train` that builds everything and runs no step (the CLI, as a user starts it)."""
    import subprocess
    import time

    run_dir = tempfile.mkdtemp(prefix="bench_startup_")
    ours = ("num_steps", "heldout_eval", "save_final", "train.checkpoint.on_exit", "logger", "hydra.run.dir")
    overrides = [o for o in overrides if o.split("=", 1)[0] not in ours]
    cmd = [sys.executable, "-m", "sposd", "train", *overrides, "num_steps=0", "heldout_eval=false", "save_final=false",
           "train.checkpoint.on_exit=false", "logger=jsonl", f"hydra.run.dir={run_dir}"]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"start-up run failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
