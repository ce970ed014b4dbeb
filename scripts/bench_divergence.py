#!/usr/bin/env python
"""Naive vs chunked full-vocabulary divergence: peak extra memory, time, and agreement of loss and gradient.

For each of fkl, rkl and jsd(0.5): forward + backward of loss = sum_t w_t D_t on one row of T positions over a
V-token vocabulary (default Qwen3's 151,936), with the student logits a leaf that receives the gradient.

- naive:   `naive_divergence` (full fp32 log-softmax of both models, autograd), what OPSD does.
- chunked: `per_token_divergence(support="full")` (one [chunk, V] fp32 block at a time, recompute in backward).

Peak extra memory is measured above the inputs (student, teacher, weights). On CUDA with the allocator's peak
counter. On CPU, where PyTorch keeps no allocator statistics, each (variant, divergence) runs in a fresh
subprocess with MALLOC_MMAP_THRESHOLD_ set so freed blocks go back to the OS: the kernel's peak-RSS counter
(VmHWM) is reset through /proc/self/clear_refs right before the call and read after it. Time is the median of
--repeats runs after one warm-up.

Both variants must return the gradient w.r.t. the student logits, one [T, V] tensor of the input's dtype. The
targeted ratio `peak_ratio` is over working memory: peak extra memory minus that unavoidable output (the same
size for both), i.e. what the divergence itself holds on top of its inputs and its result; `peak_ratio_incl_grad`
is the ratio with the gradient counted.

Targets: peak ratio <= 1/8, time ratio <= 1.3, max abs diff of D and of the gradient <= 1e-5 (fp32).

    python scripts/bench_divergence.py                    # T = 2048, V = 151,936, CPU fp32
    python scripts/bench_divergence.py --T 16384 --dtype bfloat16 --device cuda --skip-naive --json
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

KINDS = {"fkl": ("fkl", 0.5), "rkl": ("rkl", 0.5), "jsd": ("jsd", 0.5)}
REPO = Path(__file__).resolve().parents[1]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _inputs(T: int, V: int, dtype, device):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    s = (torch.randn(1, T, V, generator=g) * 2).to(device=device, dtype=dtype).requires_grad_()
    t = (torch.randn(1, T, V, generator=g) * 2).to(device=device, dtype=dtype)
    w = torch.rand(1, T, generator=g).to(device)
    return s, t, w


def _fn(variant: str, kind: str, chunk: int):
    from sposd.ops.divergence import naive_divergence, per_token_divergence

    k, beta = KINDS[kind]
    if variant == "naive":
        return lambda s, t: naive_divergence(s, t, kind=k, beta=beta)
    return lambda s, t: per_token_divergence(s, t, kind=k, beta=beta, chunk_tokens=chunk)


def measure(
    variant: str, kind: str, *, T: int, V: int, dtype: str, device: str, chunk: int, repeats: int, save: str | None
) -> dict:
    """Run in this process: peak extra memory (MB) of one fwd+bwd, and median time."""
    import torch

    dt = getattr(torch, dtype)
    s, t, w = _inputs(T, V, dt, device)
    fn = _fn(variant, kind, chunk)

    def once():
        s.grad = None
        d = fn(s, t)
        (d * w).sum().backward()
        return d

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        d = once()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kb("VmRSS")
        d = once()
        peak_mb = (_rss_kb("VmHWM") - base) / 1024
    if save:
        torch.save({"d": d.detach().float().cpu(), "grad": s.grad.float().cpu()}, save)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak_mb, "time_s": statistics.median(times)}


def _subprocess(args, variant: str, kind: str, save: str | None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_child",
        variant,
        kind,
        "--T",
        str(args.T),
        "--V",
        str(args.V),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
        "--chunk-tokens",
        str(args.chunk_tokens),
        "--repeats",
        str(args.repeats),
    ] + (["--_save", save] if save else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        if r.returncode in (-9, 137):
            return {"error": "killed (out of memory)"}
        raise SystemExit(f"{variant} {kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--V", type=int, default=151936)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--chunk-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--skip-naive", action="store_true", help="chunked only (for sizes where naive cannot fit)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object here")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args._child:
        variant, kind = args._child
        print(
            json.dumps(
                measure(
                    variant,
                    kind,
                    T=args.T,
                    V=args.V,
                    dtype=args.dtype,
                    device=args.device,
                    chunk=args.chunk_tokens,
                    repeats=args.repeats,
                    save=args._save,
                )
            )
        )
        return

    import tempfile

    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_div_"))
    print(
        f"T={args.T} V={args.V} dtype={args.dtype} device={args.device} chunk={args.chunk_tokens} "
        f"(inputs: 2 x {args.T * args.V * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20:.0f} MB)"
    )
    for kind in args.kinds:
        run = (
            (
                lambda v, save, kind=kind: measure(
                    v,
                    kind,
                    T=args.T,
                    V=args.V,
                    dtype=args.dtype,
                    device=args.device,
                    chunk=args.chunk_tokens,
                    repeats=args.repeats,
                    save=save,
                )
            )
            if args.device == "cuda"
            else (lambda v, save, kind=kind: _subprocess(args, v, kind, save))
        )
        ch = run("chunked", str(tmp / f"{kind}_chunked.pt"))
        grad_mb = args.T * args.V * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
        r = {
            "chunked_peak_mb": ch["peak_mb"],
            "chunked_time_s": ch["time_s"],
            "naive_peak_mb": None,
            "naive_time_s": None,
            "grad_mb": grad_mb,
            "peak_ratio": None,
            "peak_ratio_incl_grad": None,
            "time_ratio": None,
            "max_abs_diff_loss": None,
            "max_abs_diff_grad": None,
        }
        if not args.skip_naive:
            nv = run("naive", str(tmp / f"{kind}_naive.pt"))
            if "error" in nv:
                r["naive_error"] = nv["error"]
            else:
                a, b = torch.load(tmp / f"{kind}_chunked.pt"), torch.load(tmp / f"{kind}_naive.pt")
                r.update(
                    naive_peak_mb=nv["peak_mb"],
                    naive_time_s=nv["time_s"],
                    peak_ratio=max(ch["peak_mb"] - grad_mb, 0.0) / max(nv["peak_mb"] - grad_mb, 1e-9),
                    peak_ratio_incl_grad=ch["peak_mb"] / nv["peak_mb"],
                    time_ratio=ch["time_s"] / nv["time_s"],
                    max_abs_diff_loss=float((a["d"] - b["d"]).abs().max()),
                    max_abs_diff_grad=float((a["grad"] - b["grad"]).abs().max()),
                )
        results[kind] = r
        if r["peak_ratio"] is None:
            print(f"{kind:4s} chunked: peak {r['chunked_peak_mb']:8.0f} MB  time {r['chunked_time_s']:.3f} s")
            continue
        ok = lambda c: "PASS" if c else "FAIL"  # noqa: E731
        tol = 1e-5 if args.dtype == "float32" else 1e-2
        print(
            f"{kind:4s} peak naive {r['naive_peak_mb']:8.0f} MB  chunked {r['chunked_peak_mb']:7.0f} MB  "
            f"(grad {grad_mb:.0f} MB) ratio w/o grad {r['peak_ratio']:.3f} [{ok(r['peak_ratio'] <= 1 / 8)}] "
            f"with grad {r['peak_ratio_incl_grad']:.3f}   "
            f"time naive {r['naive_time_s']:.3f} s  chunked {r['chunked_time_s']:.3f} s  "
            f"ratio {r['time_ratio']:.2f} [{ok(r['time_ratio'] <= 1.3)}]   "
            f"max|dD| {r['max_abs_diff_loss']:.1e}  max|dgrad| {r['max_abs_diff_grad']:.1e} "
            f"[{ok(max(r['max_abs_diff_loss'], r['max_abs_diff_grad']) <= tol)}]"
        )
    out = {
        "T": args.T,
        "V": args.V,
        "device": args.device,
        "dtype": args.dtype,
        "chunk_tokens": args.chunk_tokens,
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
