#!/usr/bin/env python
"""What `train.inspect.every` costs: step time with and without the recording, interleaved in one run, and the
bytes stored per inspected row.

One `train()` run of the embedded default (the warm-started tiny model, the toy task) with
`train.inspect.every=2`: steps 2, 4, 6, ... record (as every step would at every=1), steps 3, 5, 7, ... do not, so
both kinds of step share the machine's conditions. Reported (step 1 dropped: it warms up): the mean wall and CPU
seconds of recording and of plain steps, the recording's own wall seconds (`time/inspect_s`) and its share of a
plain step (the overhead at every=1), and the gzip-compressed JSONL bytes per inspected row.

    python scripts/bench_inspect.py                          # SSOPD, 21 steps, 4 rows per inspected step
    python scripts/bench_inspect.py algo=opsd --steps 11 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. algo=opsd)")
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--rows", type=int, default=4, help="train.inspect.rows")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()

    from sposd.inspect.records import load_step, recorded_steps
    from sposd.plan import compose_train_cfg
    from sposd.train import train

    over = [
        f"num_steps={args.steps}", "heldout_eval=false", "save_final=false", "logger=jsonl",
        "train.inspect.every=2", f"train.inspect.rows={args.rows}", *args.overrides,
    ]  # fmt: skip
    cfg = compose_train_cfg(over)
    with tempfile.TemporaryDirectory(prefix="bench_inspect_") as tmp:
        run = Path(tmp) / "run"
        train(cfg, run)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][1:]
        steps = recorded_steps(run)
        n_rows = sum(len(load_step(run, s)) for s in steps)
        n_tokens = sum(len(r["tokens"]) for s in steps for r in load_step(run, s))
        n_bytes = sum((run / "inspect" / f"step_{s}.jsonl.gz").stat().st_size for s in steps)
    on = [r for r in rows if r["step"] % 2 == 0]
    off = [r for r in rows if r["step"] % 2 == 1]

    def mean(rs, key):
        return statistics.mean(r.get(key, 0.0) for r in rs)

    res = {
        "algo": cfg.algo.name,
        "steps": args.steps,
        "rows_per_step": args.rows,
        "plain_step_s": mean(off, "time/step_s"),
        "inspect_step_s": mean(on, "time/step_s"),
        "plain_step_cpu_s": mean(off, "time/step_cpu_s"),
        "inspect_step_cpu_s": mean(on, "time/step_cpu_s"),
        "inspect_s": mean(on, "time/inspect_s"),
        "rows": n_rows,
        "bytes_per_row": n_bytes / max(n_rows, 1),
        "bytes_per_token": n_bytes / max(n_tokens, 1),
    }
    res["overhead_every_1"] = res["inspect_s"] / res["plain_step_s"]
    res["step_ratio"] = res["inspect_step_s"] / res["plain_step_s"]
    res["cpu_ratio"] = res["inspect_step_cpu_s"] / res["plain_step_cpu_s"]
    print(
        f"[bench] {res['algo']}: plain step {res['plain_step_s']:.3f} s ({res['plain_step_cpu_s']:.3f} CPU s), "
        f"recording step {res['inspect_step_s']:.3f} s ({res['inspect_step_cpu_s']:.3f} CPU s); recording itself "
        f"{res['inspect_s'] * 1e3:.1f} ms = {res['overhead_every_1']:.1%} of a plain step; "
        f"{res['bytes_per_row']:.0f} bytes per row ({res['bytes_per_token']:.1f} per token, {n_rows} rows)"
    )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
