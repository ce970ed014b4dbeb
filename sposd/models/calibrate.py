"""Re-measure the toy warm start: wall time and sampled held-out accuracy per seed.

    python -m sposd.models.calibrate --seeds 0 1 2 --steps 600 --out /tmp/calib
    python -m sposd.models.calibrate --model ~/.cache/sposd/toy_models/<key>    # probe a cached model only

Prints one JSON line per seed: warm-start wall time, final loss, sampled accuracy at the given temperature
on held-out problems with the student prompt and under every teacher message the warm start teaches (PROBES), and the
student's greedy accuracy.
The numbers are only meaningful on an otherwise idle machine (two processes that each spin 2 OpenMP threads on 2 cores
slow each other down many times over).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# name -> sample_accuracy's message knobs: the student prompt, then every teacher format the warm start teaches
PROBES = {
    "acc": {},
    "acc_opsd_own": dict(fmt="opsd", style="own"),
    "acc_opsd_foreign": dict(fmt="opsd", style="foreign"),
    "acc_opsd_partial": dict(fmt="opsd_partial", style="own"),
    "acc_sdpo": dict(fmt="sdpo", style="own"),
    "acc_sdpo_exact": dict(fmt="sdpo_exact", style="own"),
    "acc_reviser_right": dict(fmt="reviser", verdict=True),
    "acc_reviser_wrong": dict(fmt="reviser", verdict=False),
    "acc_concise": dict(fmt="concise"),
}


def main(argv: list[str] | None = None) -> None:
    from sposd.data.toy import toy_records
    from sposd.models.tiny import build_tiny_model
    from sposd.models.warmstart import ARCH_DEFAULTS, sample_accuracy, warm_start

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="where warm-started models go (or --model)")
    ap.add_argument("--model", type=Path, default=None,
                    help="probe this already warm-started model (e.g. ~/.cache/sposd/toy_models/<key>) instead")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--privileged-frac", type=float, default=None)
    ap.add_argument("--slip-frac", type=float, default=None, help="model.builtin.slip_frac")
    ap.add_argument("--max-operand", type=int, default=None)
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--num-layers", type=int, default=ARCH_DEFAULTS["num_layers"])
    ap.add_argument("--hidden-size", type=int, default=ARCH_DEFAULTS["hidden_size"])
    ap.add_argument("--num-heldout", type=int, default=200)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args(argv)
    if (args.out is None) == (args.model is None):
        ap.error("give exactly one of --out (warm-start and probe) and --model (probe an existing model)")

    knobs = {k: v for k, v in dict(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                   privileged_frac=args.privileged_frac, slip_frac=args.slip_frac,
                                   max_operand=args.max_operand,
                                   num_threads=args.num_threads).items() if v is not None}
    toy_knobs = {"max_operand": args.max_operand} if args.max_operand else {}
    heldout = toy_records(args.num_heldout, split="heldout", seed=0, **toy_knobs)
    for seed in [None] if args.model else args.seeds:
        if args.model:
            out = args.model.expanduser()
        else:
            base = build_tiny_model(args.out / f"base-{seed}", seed=seed, num_layers=args.num_layers,
                                    hidden_size=args.hidden_size)
            out = warm_start(base, args.out / f"seed-{seed}", seed=seed, **knobs)
        info = json.loads((out / "warmstart.json").read_text())
        seed = info["knobs"]["seed"]
        row = dict(seed=seed, knobs=info["knobs"], wall_s=round(info["wall_s"], 1),
                   loss_last20=round(sum(info["losses"][-20:]) / 20, 4))
        for name, probe in PROBES.items():
            row[name] = round(sample_accuracy(out, heldout, n_samples=args.n_samples, temperature=args.temperature,
                                              seed=0, num_threads=args.num_threads, **probe), 3)
        # greedy decoding: the accuracy sharpening alone could reach (slips are sampled, rarely the argmax)
        row["acc_greedy"] = round(sample_accuracy(out, heldout, n_samples=1, temperature=0.0, seed=0,
                                                      num_threads=args.num_threads), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
