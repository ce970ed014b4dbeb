"""What a GPU without vLLM can check of the launch path: one rank's device placement through `sposd.dist`, the
process group's timeout and device_id, and the weight sync (`sposd.sync.weights.push_weights`) into a stand-in
engine at several bucket sizes.

`run(results, tmp, device)` fills `results` (scripts/gpu_check.py imports it); alone, it prints them:

    python scripts/gpu_check_launch.py [--device cpu|cuda] [--json]

On a CPU it runs the same code at a tiny size (a dry run of the script, not a measurement of anything).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import torch
from torch import nn


def check_placement(results: dict, device: str, *, timeout_min: float) -> None:
    """Join a world of one through sposd.dist and record where this rank lives and what its process group got."""
    import torch.distributed as dist

    from sposd import dist as sdist

    out = results.setdefault("launch/placement", {})
    out["already_initialized"] = dist.is_initialized()
    visible = torch.cuda.device_count() if device == "cuda" else 0
    out["visible_gpus"] = visible
    out["local_rank_env"] = os.environ.get("LOCAL_RANK")
    out["remap_if_one_gpu"] = sdist.local_device_env({"LOCAL_RANK": "3"}, visible_gpus=1)  # SLURM one-GPU binding
    t0 = time.perf_counter()
    rank, world = sdist.init_distributed(device, timeout_min=timeout_min)
    out.update(rank=rank, world=world, init_s=time.perf_counter() - t0, backend=dist.get_backend())
    pg = dist.group.WORLD
    backend_device = torch.device("cuda" if device == "cuda" else "cpu")
    try:
        out["pg_timeout_s"] = pg._get_backend(backend_device).options._timeout.total_seconds()
    except (AttributeError, RuntimeError) as e:  # a torch without these internals
        out["pg_timeout_s"] = f"unreadable: {e}"
    bound = getattr(pg, "bound_device_id", None)
    out["pg_bound_device"] = str(bound) if bound is not None else None
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        out["current_device"] = torch.cuda.current_device()
        out["current_device_is_local_rank"] = torch.cuda.current_device() == local
    t = torch.ones(1 << 20, device=backend_device)
    t0 = time.perf_counter()
    dist.all_reduce(t)
    if device == "cuda":
        torch.cuda.synchronize()
    out["all_reduce_4mb_s"] = time.perf_counter() - t0
    out["all_reduce_ok"] = bool(t[0].item() == world)


class StandInEngine:
    """Copies each streamed (name, tensor) into a model of the same shapes, as vLLM's direct load_weights does."""

    def __init__(self, target: nn.Module) -> None:
        self.params = dict(target.named_parameters())
        self.loaded, self.mismatches = 0, []

    def load_weights(self, named) -> None:
        for name, tensor in named:
            dst = self.params[name]
            if tensor.device != dst.device or tensor.dtype != dst.dtype:
                self.mismatches.append(f"{name}: {tensor.device}/{tensor.dtype} into {dst.device}/{dst.dtype}")
            dst.data.copy_(tensor)
            self.loaded += 1


def _model(layers: int, width: int, device: str, dtype: torch.dtype) -> nn.Module:
    with torch.device(device):
        return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)]).to(dtype)


def check_sync(results: dict, device: str, *, layers: int, width: int, bucket_mb: list[int]) -> None:
    """push_weights from a learner-side model into a stand-in engine, per bucket size: GB/s and correctness."""
    from sposd.sync.weights import push_weights

    dtype = torch.bfloat16
    src, dst = _model(layers, width, device, dtype), _model(layers, width, device, dtype)
    out = results.setdefault("launch/sync", {"model_gb": sum(p.numel() * 2 for p in src.parameters()) / 1e9})
    push_weights(src, StandInEngine(dst), bucket_bytes=bucket_mb[0] << 20)  # warm-up: imports, allocator
    for mb in bucket_mb:
        engine = StandInEngine(dst)
        for p in dst.parameters():
            p.data.zero_()
        if device == "cuda":
            torch.cuda.synchronize()
        metrics = push_weights(src, engine, bucket_bytes=mb << 20)
        if device == "cuda":
            torch.cuda.synchronize()
        same = all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters(), strict=True))
        out[f"bucket_{mb}mb"] = {**metrics, "tensors": engine.loaded, "identical": same,
                                 "device_dtype_mismatches": engine.mismatches[:3]}  # fmt: skip


def run(results: dict, tmp: pathlib.Path, device: str) -> dict:
    """All launch checks; a failing check records its error and the others still run."""
    big = device == "cuda"
    checks = {
        "launch/placement": lambda: check_placement(results, device, timeout_min=180),
        "launch/sync": lambda: check_sync(results, device, layers=8 if big else 4, width=8192 if big else 512,
                                          bucket_mb=[64, 256, 1024] if big else [1, 4]),  # fmt: skip
    }
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            check()
        except Exception as e:  # record and go on: one script, one device session
            results.setdefault(name, {})["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        results.setdefault(name, {})["check_s"] = round(time.perf_counter() - t0, 3)
    (tmp / "gpu_check_launch.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run({}, pathlib.Path(tmp), args.device)
    for name, section in results.items():
        print(name, json.dumps(section, default=str))
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
