#!/usr/bin/env python
"""Cross-rank balance of the learner's padded tokens, before and after `plan.balance_ranks` (GPU_AUDIT F17).

The length distribution of GPU_AUDIT F17: per rank 64 completions, lognormal with median 4,096 tokens and sigma
0.7, capped at 8,192; prompts lognormal with median 150 tokens (sigma 0.3); 8 ranks; `micro_batch_tokens` 16,384.
Each trial draws one step's samples. "Before": each rank keeps its own 64 (rollouts as sampled). "After": all
512 are reassigned by `balance_ranks` (the learner does this at the start of `train_step`). A rank's load is its
padded tokens after micro-batch planning (`plan.padded_tokens`); the imbalance is the heaviest rank over the mean
minus 1. Also reported: the spread of micro-batch counts (every rank runs the largest, the others partly empty).

    python scripts/bench_rank_balance.py                  # 8 ranks x 64, 50 trials
    python scripts/bench_rank_balance.py --median 12000 --cap 38912 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from sposd.learner.plan import balance_ranks, padded_tokens, plan_micro_batches


def draw(rng: random.Random, n: int, *, median: float, sigma: float, cap: int, prompt_median: float):
    import math

    comp = [min(cap, max(1, int(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]
    prompt = [max(1, int(rng.lognormvariate(math.log(prompt_median), 0.3))) for _ in range(n)]
    return list(zip(prompt, comp, strict=True))


def imbalance(per_rank: list[list[tuple[int, int]]], budget: int) -> tuple[float, int]:
    loads = [padded_tokens(r, budget) for r in per_rank]
    counts = [len(plan_micro_batches(r, budget)) for r in per_rank]
    return max(loads) / statistics.mean(loads) - 1, max(counts) - min(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--per-rank", type=int, default=64)
    ap.add_argument("--median", type=float, default=4096)
    ap.add_argument("--sigma", type=float, default=0.7)
    ap.add_argument("--cap", type=int, default=8192)
    ap.add_argument("--prompt-median", type=float, default=150)
    ap.add_argument("--budget", type=int, default=16384)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    before, after, spread_before, spread_after = [], [], [], []
    for _ in range(args.trials):
        per_rank = [
            draw(rng, args.per_rank, median=args.median, sigma=args.sigma, cap=args.cap,
                 prompt_median=args.prompt_median)
            for _ in range(args.ranks)
        ]
        imb, spread = imbalance(per_rank, args.budget)
        before.append(imb)
        spread_before.append(spread)
        flat = [x for r in per_rank for x in r]
        assign = balance_ranks([p + t for p, t in flat], args.ranks)
        imb, spread = imbalance([[flat[i] for i in idx] for idx in assign], args.budget)
        after.append(imb)
        spread_after.append(spread)
    out = {
        "ranks": args.ranks,
        "per_rank": args.per_rank,
        "budget": args.budget,
        "trials": args.trials,
        "imbalance_before_mean": statistics.mean(before),
        "imbalance_before_max": max(before),
        "imbalance_after_mean": statistics.mean(after),
        "imbalance_after_max": max(after),
        "micro_batch_spread_before_mean": statistics.mean(spread_before),
        "micro_batch_spread_after_mean": statistics.mean(spread_after),
    }
    print(f"heaviest rank over the mean, padded tokens ({args.trials} trials, {args.ranks} ranks x {args.per_rank}):")
    print(f"  as sampled : mean {out['imbalance_before_mean']:.1%}  worst {out['imbalance_before_max']:.1%}")
    print(f"  balanced   : mean {out['imbalance_after_mean']:.1%}  worst {out['imbalance_after_max']:.1%}")
    print(f"micro-batch count spread (max - min): {out['micro_batch_spread_before_mean']:.1f} -> "
          f"{out['micro_batch_spread_after_mean']:.1f}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
