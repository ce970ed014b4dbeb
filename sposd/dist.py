"""torch.distributed helpers: one process group for the learner (gloo on CPU, NCCL on GPU), also for one rank."""

from __future__ import annotations

import gc
import os
import re
import socket
from collections.abc import Mapping
from datetime import timedelta

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


DEFAULT_TIMEOUT_MIN = 180.0


def local_device_env(env: Mapping[str, str], visible_gpus: int) -> dict[str, str]:
    """The LOCAL_RANK to use as this rank's device index (as a dict to merge into the environment; {} if it is fine).

    SLURM sites that bind one GPU per task (`--gpus-per-task=1`, cgroup ConstrainDevices) show each task a single
    cuda:0 while SLURM_LOCALID, hence LOCAL_RANK, counts tasks on the node: the device index is then 0. torch,
    DeepSpeed and vLLM's external_launcher all read LOCAL_RANK, so the remap goes into the environment.

    Args:
        env: the process environment.
        visible_gpus: torch.cuda.device_count() of this process.
    """
    local = int(env.get("LOCAL_RANK", "0"))
    if visible_gpus == 1 and local != 0:
        return {"LOCAL_RANK": "0"}
    if visible_gpus and local >= visible_gpus:
        raise ValueError(
            f"LOCAL_RANK={local} but this task sees {visible_gpus} GPUs (CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one rank per visible GPU"
        )
    return {}


def process_group_kwargs(device: str, *, local_rank: int, timeout_min: float) -> dict:
    """init_process_group's backend, timeout and (NCCL) device_id.

    The timeout bounds how long a rank waits at a collective for its peers. Ranks generate on their own engines
    and meet at the learner's first collective, minutes apart with long reasoning rollouts: NCCL's default
    (10 minutes) would abort such runs. `device_id` binds the NCCL communicator to this rank's GPU (eager
    initialisation, no "guessing device" barrier).
    """
    if timeout_min <= 0:
        raise ValueError(f"hardware.dist_timeout_min must be > 0, got {timeout_min}")
    kwargs: dict = {"backend": "nccl" if device == "cuda" else "gloo", "timeout": timedelta(minutes=timeout_min)}
    if device == "cuda":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    return kwargs


def init_distributed(device: str, *, timeout_min: float = DEFAULT_TIMEOUT_MIN) -> tuple[int, int]:
    """Join (or, for a lone process, create) the default process group; returns (rank, world_size).

    torchrun sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; under SLURM (`srun`, a task per rank) they are
    derived from SLURM's variables; a plain `sposd train` is a world of one, which DeepSpeed needs all the same.
    `timeout_min` bounds any wait at a collective (`hardware.dist_timeout_min`).
    """
    slurm = slurm_rendezvous(os.environ)
    if slurm is not None:
        os.environ.update(slurm)
    if not dist.is_initialized():
        if device == "cuda":
            os.environ.update(local_device_env(os.environ, torch.cuda.device_count()))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs = process_group_kwargs(device, local_rank=local_rank, timeout_min=timeout_min)
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        if "RANK" in os.environ:  # launched by torchrun / srun: rendezvous through the environment
            dist.init_process_group(**kwargs)
        else:
            # A lone process: a private rendezvous. Writing RANK/MASTER_PORT into os.environ instead would leak
            # into child processes, which would then take themselves for torchrun ranks on a busy port.
            dist.init_process_group(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, **kwargs)
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
    """Leave the process group at the end of a run that succeeded on every rank.

    A barrier first, so no rank tears down its connections while another still talks to it; then every group is
    destroyed while the interpreter is fully alive. Without that, gloo's worker threads are left to C++ static
    destruction at exit, which can abort a finished rank ("terminate called without an active exception",
    pytorch/pytorch#190489), and a scheduler records the successful run as failed. Not for error paths: a rank that
    failed would leave the others waiting at the barrier.
    """
    if not dist.is_initialized():
        return
    # free what is already garbage (e.g. finished collective handles and the tensors gloo's threads hold for them)
    # while the interpreter can still take the GIL; a DeepSpeed engine in use stays alive (its hooks reference it)
    gc.collect()
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
