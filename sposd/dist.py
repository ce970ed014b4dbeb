"""torch.distributed helpers: one process group for the learner (gloo on CPU, NCCL on GPU), also for one rank."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str) -> tuple[int, int]:
    """Join (or, for a lone process, create) the default process group; returns (rank, world_size).

    torchrun sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; a plain `sposd train` is a world of one, which
    DeepSpeed needs all the same.
    """
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ:  # launched by torchrun / srun: rendezvous through the environment
            dist.init_process_group(backend=backend)
        else:
            # A lone process: a private rendezvous. Writing RANK/MASTER_PORT into os.environ instead would leak
            # into child processes, which would then take themselves for torchrun ranks on a busy port.
            dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                    world_size=1)
            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed reads it; harmless to inherit
    return dist.get_rank(), dist.get_world_size()


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """All-reduce a few Python scalars (sum or max) across ranks; a no-op for a world of one."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_objects(obj):
    """Gather one picklable object per rank (list in rank order)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
