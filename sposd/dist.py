"""torch.distributed helpers: one process group for the learner (gloo on CPU, NCCL on GPU), also for one rank."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03" (what `scontrol show hostnames` prints
    first), without calling scontrol."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None or not head.group(1):
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(3)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_rendezvous(env: Mapping[str, str]) -> dict[str, str] | None:
    """torchrun-style variables for a SLURM job step whose tasks are the ranks (`srun`, one task per GPU).

    None unless SLURM runs more than one task (SLURM_NTASKS > 1) and torchrun has not set RANK already. The
    master is the job's first node; the port is derived from the job id, so every task computes the same one.
    """
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError("SLURM_NTASKS > 1 but no SLURM_JOB_NODELIST: cannot find the rendezvous host")
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
    }


def launched_as_ranks() -> bool:
    """True when this process is already one rank of a multi-process job (torchrun, or srun tasks)."""
    return "RANK" in os.environ or slurm_rendezvous(os.environ) is not None


def init_distributed(device: str) -> tuple[int, int]:
    """Join (or, for a lone process, create) the default process group; returns (rank, world_size).

    torchrun sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; under SLURM (`srun`, a task per rank) they are
    derived from SLURM's variables; a plain `sposd train` is a world of one, which DeepSpeed needs all the same.
    """
    slurm = slurm_rendezvous(os.environ)
    if slurm is not None:
        os.environ.update(slurm)
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
