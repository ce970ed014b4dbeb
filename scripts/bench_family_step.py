#!/usr/bin/env python
"""Step cost of every method relative to GRPO, at equal rollouts per step, in one process.

Each method runs `--steps` training steps of the embedded default (the warm-started tiny model, the toy task)
through `train()`, all methods sharing one in-process vLLM engine (each run first pushes its learner's initial
weights into it). Reported per method, as means over the steps after the first: wall seconds per step, this
process's CPU seconds per step (all threads; far less sensitive than wall time to other jobs on a shared
machine), the learner's wall seconds, the teacher passes' wall seconds, and the ratios to GRPO.

    python scripts/bench_family_step.py                       # every method, 6 steps, 64 rollouts per step
    python scripts/bench_family_step.py --algos grpo tip --steps 10 --json

Wall and CPU time both grow when other jobs share the cores (OpenMP threads spin while they wait): run it on a
quiet machine, and list grpo again at the end to see whether the conditions drifted.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from compare_algos import ALL_ALGOS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    ap.add_argument("--algos", nargs="+", default=list(ALL_ALGOS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rollouts", type=int, default=64, help="rollouts per step for every method")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    from sposd import dist as sdist
    from sposd.config import register_configs, register_resolvers, to_object
    from sposd.models.paths import resolve_model_path
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.train import train

    register_resolvers()
    register_configs()

    def cfg_of(algo: str, prompts: int | None = None):
        over = [f"algo={algo}", f"num_steps={args.steps}", "heldout_eval=false", "save_final=false", "logger=jsonl"]
        if prompts is not None:
            over.append(f"prompts_per_step={prompts}")
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return to_object(compose("train", overrides=[*over, *args.overrides]))

    sdist.init_distributed("cpu")
    base = cfg_of("grpo")
    engine = VLLMEngine(
        resolve_model_path(base.model, data=base.data, cache_dir=base.cache_dir),
        dtype=base.model.dtype,
        max_model_len=base.model.max_prompt_len + base.model.max_new_tokens,
        seed=0,
        kv_cache_gb=base.hardware.vllm_kv_cache_gb,
    )
    res: dict[str, dict] = {}
    keys = ("time/step_s", "time/step_cpu_s", "time/learn_s", "time/teacher_fwd_s")
    try:
        with tempfile.TemporaryDirectory(prefix="bench_family_") as tmp:
            for i, algo in enumerate(args.algos):  # a method listed twice is measured twice (the last one is kept)
                g = cfg_of(algo).algo.group_size
                cfg = cfg_of(algo, prompts=args.rollouts // g)
                run = Path(tmp) / f"{i}_{algo}"
                train(cfg, run, engine=engine, sync_engine_first=True, close_engine=False)
                gc.collect()
                rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
                res[algo] = {k.split("/")[1]: statistics.mean(r.get(k, 0.0) for r in rows) for k in keys}
                print(f"[bench] {algo}: {res[algo]}", flush=True)
    finally:
        engine.close()
    ref = res.get("grpo")
    print("\n| algo | wall s/step | CPU s/step | learner s | teacher s | wall / GRPO | CPU / GRPO |")
    print("|---|---|---|---|---|---|---|")
    for algo, r in res.items():
        rel = (f"{r['step_s'] / ref['step_s']:.2f} | {r['step_cpu_s'] / ref['step_cpu_s']:.2f}") if ref else "– | –"
        print(
            f"| {algo} | {r['step_s']:.2f} | {r['step_cpu_s']:.2f} | {r['learn_s']:.2f} | {r['teacher_fwd_s']:.2f} | "
            f"{rel} |"
        )
    if args.json:
        print(json.dumps({"steps": args.steps, "rollouts": args.rollouts, "methods": res}))


if __name__ == "__main__":
    main()
