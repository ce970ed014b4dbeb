#!/usr/bin/env python
"""Naive vs chunked full-vocabulary divergence: peak extra memory, time, and agreement of D and of the gradient.

For each of fkl, rkl and jsd(0.5): forward + backward of loss = sum_t w_t D_t on one row of T positions over a
V-token vocabulary (default Qwen3's 151,936), w a fixed random weight, the student logits a leaf that receives
the gradient. Both variants see the same seeded inputs and compute in fp32 (fp32 accumulation for bf16 inputs).

- naive:   `naive_divergence` (full fp32 log-softmax of both models, then the formula with autograd; OPSD's way).
- chunked: `per_token_divergence(support="full")` (a few [chunk, V] fp32 blocks, recompute in backward).

Peak extra memory is measured above the inputs (student, teacher, weights); the returned gradient counts. On CUDA
with the allocator's peak counter. On CPU, where PyTorch keeps no allocator statistics, each (variant, divergence)
runs in a fresh subprocess with MALLOC_MMAP_THRESHOLD_ set so freed blocks go back to the OS: the kernel's peak-RSS
counter (VmHWM) is reset through /proc/self/clear_refs right before the call and read after it. Time is the median
of --repeats runs after one warm-up (the measured run), in the same process.

Both variants must return the gradient w.r.t. the student logits, one [T, V] tensor of the input's dtype, so the
targeted `peak_ratio` is over working memory: peak extra minus that unavoidable output (the same for both), i.e.
what the divergence holds on top of its inputs and its result. `peak_ratio_incl_grad` counts the gradient too.

Targets: peak_ratio <= 1/8, time ratio <= 1.3, max abs diff of D and of the gradient <= 1e-5 (fp32).

CPU safety: a naive run whose estimated peak does not fit in MemAvailable is skipped (reported as naive_error), and
each CPU child caps its address space near MemAvailable, so an allocation fails inside the child rather than
waking the OOM killer (which would pick the child first: oom_score_adj 1000).

    python scripts/bench_divergence.py                    # T = 2048, V = 151,936, fp32, cuda if available
    python scripts/bench_divergence.py --T 128 --V 32768 --device cpu --json
    python scripts/bench_divergence.py --T 16384 --dtype bfloat16 --device cuda --skip-naive --out div.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = {"fkl": ("fkl", 0.5), "rkl": ("rkl", 0.5), "jsd": ("jsd", 0.5)}
# Naive's measured peak extra memory in fp32 [T, V] tensors, gradient included (6.3 fkl, 7.3 rkl, 11.5 jsd at
# T = 2048, V = 151,936), rounded up; used only to skip a CPU run that cannot fit.
NAIVE_TV_TENSORS = {"fkl": 7, "rkl": 8, "jsd": 12}
REPO = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


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


def measure(variant: str, kind: str, args, save: str | None) -> dict:
    """In this process: peak extra memory (MB) of one fwd+bwd, then the median time of args.repeats more."""
    import torch

    cuda = args.device == "cuda"
    s, t, w = _inputs(args.T, args.V, getattr(torch, args.dtype), args.device)
    fn = _fn(variant, kind, args.chunk_tokens)

    def once():
        s.grad = None
        d = fn(s, t)
        (d * w).sum().backward()
        return d

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        d = once()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- current RSS
        base = _status_kb("VmRSS")
        d = once()
        peak_mb = (_status_kb("VmHWM") - base) / 1024
    if save:
        torch.save({"d": d.detach().float().cpu(), "grad": s.grad.float().cpu()}, save)
    del d
    times = []
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak_mb, "time_s": statistics.median(times)}


def _child(args) -> None:
    """Entry of a CPU measurement subprocess: cap the address space, measure, print one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cap = _status_kb("VmSize") * 1024 + int(0.9 * _mem_available_bytes())
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    Path("/proc/self/oom_score_adj").write_text("1000")  # if memory still runs out, the OOM killer takes this child
    variant, kind = args._child
    try:
        out = measure(variant, kind, args, args._save)
    except RuntimeError as e:  # the cap above: the allocator says it cannot allocate
        out = {"error": f"out of memory ({str(e).splitlines()[0][:120]})"}
    print(json.dumps(out))


def _run_cpu_child(args, variant: str, kind: str, save: str) -> dict:
    if variant == "naive":
        need = NAIVE_TV_TENSORS[kind] * args.T * args.V * 4 + 2 * args.T * args.V * (
            2 if args.dtype == "bfloat16" else 4
        )
        avail = _mem_available_bytes()
        if need > 0.85 * avail:
            return {"error": f"skipped: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"}
    cmd = [sys.executable, __file__, "--_child", variant, kind, "--_save", save, "--device", "cpu"]
    for flag in ("T", "V", "dtype", "chunk_tokens", "repeats", "threads"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode in (-9, 137):
        return {"error": "killed (out of memory)"}
    if r.returncode:
        raise SystemExit(f"{variant} {kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _compare(kind: str, ch: dict, nv: dict, tmp: Path, grad_mb: float) -> dict:
    import torch

    a, b = torch.load(tmp / f"{kind}_chunked.pt"), torch.load(tmp / f"{kind}_naive.pt")
    return {
        "naive_peak_mb": nv["peak_mb"],
        "naive_time_s": nv["time_s"],
        "peak_ratio": max(ch["peak_mb"] - grad_mb, 0.0) / max(nv["peak_mb"] - grad_mb, 1e-9),
        "peak_ratio_incl_grad": ch["peak_mb"] / nv["peak_mb"],
        "time_ratio": ch["time_s"] / nv["time_s"],
        "max_abs_diff_loss": float((a["d"] - b["d"]).abs().max()),
        "max_abs_diff_grad": float((a["grad"] - b["grad"]).abs().max()),
    }


def _line(kind: str, r: dict, tol: float) -> str:
    if r["peak_ratio"] is None:
        why = f"  naive: {r['naive_error']}" if "naive_error" in r else ""
        return f"{kind:4s} chunked: peak {r['chunked_peak_mb']:8.0f} MB  time {r['chunked_time_s']:.3f} s{why}"

    def ok(c: bool) -> str:
        return "PASS" if c else "FAIL"

    diff = max(r["max_abs_diff_loss"], r["max_abs_diff_grad"])
    return (
        f"{kind:4s} peak MB naive {r['naive_peak_mb']:7.0f} chunked {r['chunked_peak_mb']:6.0f} "
        f"(grad {r['grad_mb']:.0f}): ratio w/o grad {r['peak_ratio']:.3f} [{ok(r['peak_ratio'] <= 1 / 8)}] "
        f"with grad {r['peak_ratio_incl_grad']:.3f} | "
        f"time s naive {r['naive_time_s']:.3f} chunked {r['chunked_time_s']:.3f} "
        f"ratio {r['time_ratio']:.2f} [{ok(r['time_ratio'] <= 1.3)}] | "
        f"max|dD| {r['max_abs_diff_loss']:.1e} max|dgrad| {r['max_abs_diff_grad']:.1e} [{ok(diff <= tol)}]"
    )


def _bench_kind(kind: str, args, run, tmp: Path, grad_mb: float) -> dict:
    ch = run("chunked", kind, str(tmp / f"{kind}_chunked.pt"))
    if "error" in ch:
        raise SystemExit(f"chunked {kind}: {ch['error']}")
    r = {"chunked_peak_mb": ch["peak_mb"], "chunked_time_s": ch["time_s"], "grad_mb": grad_mb}
    r.update(dict.fromkeys(["naive_peak_mb", "naive_time_s", "peak_ratio", "peak_ratio_incl_grad", "time_ratio"]))
    r.update(dict.fromkeys(["max_abs_diff_loss", "max_abs_diff_grad"]))
    if not args.skip_naive:
        nv = run("naive", kind, str(tmp / f"{kind}_naive.pt"))
        if "error" in nv:
            r["naive_error"] = nv["error"]
        else:
            r.update(_compare(kind, ch, nv, tmp, grad_mb))
    for f in tmp.glob(f"{kind}_*.pt"):
        f.unlink()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=2048, help="positions (one row)")
    ap.add_argument("--V", type=int, default=151936, help="vocabulary")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the logits")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--chunk-tokens", type=int, default=128, help="positions per [chunk, V] fp32 block")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--skip-naive", action="store_true", help="chunked only (for sizes where naive cannot fit)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        return _child(args)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:  # the CPU children set theirs from --threads too
        torch.set_num_threads(args.threads)
    elt = 2 if args.dtype == "bfloat16" else 4
    grad_mb = args.T * args.V * elt / 2**20
    print(
        f"T={args.T} V={args.V} dtype={args.dtype} device={args.device} chunk_tokens={args.chunk_tokens} "
        f"threads={args.threads or torch.get_num_threads()} (inputs 2 x {grad_mb:.0f} MB, gradient {grad_mb:.0f} MB)",
        flush=True,
    )

    def run(variant: str, kind: str, save: str) -> dict:
        if args.device != "cuda":
            return _run_cpu_child(args, variant, kind, save)
        try:
            return measure(variant, kind, args, save)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            return {"error": f"out of memory ({str(e).splitlines()[0][:120]})"}

    tol = 1e-5 if args.dtype == "float32" else 1e-2
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_div_") as tmp_dir:
        for kind in args.kinds:
            results[kind] = _bench_kind(kind, args, run, Path(tmp_dir), grad_mb)
            print(_line(kind, results[kind], tol), flush=True)
    # one key per divergence ("fkl", "rkl", "jsd") beside the shape and settings used
    out = {
        "T": args.T,
        "V": args.V,
        "device": args.device,
        "dtype": args.dtype,
        "chunk_tokens": args.chunk_tokens,
        **results,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
