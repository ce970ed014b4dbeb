"""The teacher's weights: current | initial | ema | periodic, and how they follow the policy.

- current:  the policy itself under no_grad (no second replica).
- initial:  the starting weights; the KL reference's engine when there is one, else a frozen copy.
- ema:      a partitioned copy blended towards the policy after every optimizer step, rank by rank on its own
            ZeRO-3 partition: theta_T <- (1 - r) theta_T + r theta. The blend runs in an fp32 shadow of the
            partition, towards the policy's fp32 master weights, and the model-dtype partition is the shadow
            rounded. A bf16 blend stalls: r (theta - theta_T) is below half a bf16 ulp until the policy is ~10
            ulps away, so the teacher stays at the initial weights (GPU_AUDIT F10, measured in
            tests/learner/test_teacher_weights.py). The shadow costs 4 B/param/world, and only when the model
            dtype is not fp32 (an fp32 partition is its own shadow).
- periodic: the policy's weights copied in every `update_every` optimizer steps, from the fp32 master (a copy
            needs no shadow: rounding the master once is exact to the model dtype).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sposd.learner.deepspeed import shard

KINDS = ("current", "initial", "ema", "periodic")


def fp32_master(p: torch.nn.Parameter) -> torch.Tensor:
    """The optimizer's fp32 copy of this rank's part of `p` (shaped like `shard(p)`), or the shard upcast when
    the optimizer keeps none (fp32 models without ZeRO, no optimizer yet)."""
    t = None
    try:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_local_fp32_param

        t = safe_get_local_fp32_param(p) if hasattr(p, "ds_id") else safe_get_full_fp32_param(p)
    except (ImportError, AttributeError, AssertionError):
        t = None
    dst = shard(p)
    if t is None or t.numel() != dst.numel():
        return dst.float()
    return t.reshape(dst.shape).float()


class TeacherWeights:
    """Which engine the teacher passes run on, and its update after each optimizer step.

    Args:
        kind: one of KINDS, or None (no teacher).
        policy: the policy's DeepSpeed engine.
        ref: the KL reference's engine, or None.
        make_copy: builds a frozen engine on the starting weights (called only when a replica is needed).
        ema_rate: r of the EMA blend.
        update_every: optimizer steps between periodic copies.
    """

    def __init__(self, kind: str | None, *, policy, ref, make_copy, ema_rate: float, update_every: int) -> None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown teacher weights {kind!r}; choose from {list(KINDS)}")
        self.kind, self.policy, self.ema_rate, self.update_every = kind, policy, ema_rate, update_every
        if kind is None:
            self.engine = None
        elif kind == "current":
            self.engine = policy
        elif kind == "initial" and ref is not None:
            self.engine = ref
        else:
            self.engine = make_copy()
        self._shadow: list[torch.Tensor] | None = None
        if kind == "ema" and any(shard(p).dtype != torch.float32 for p in self.engine.module.parameters()):
            self._shadow = [shard(p).detach().float().clone() for p in self.engine.module.parameters()]

    @property
    def has_state(self) -> bool:
        """Whether the teacher's weights differ from both the policy's and the starting ones (checkpointed)."""
        return self.kind in ("ema", "periodic")

    def _pairs(self):
        for (ns, ps), (nt, pt) in zip(
            self.policy.module.named_parameters(), self.engine.module.named_parameters(), strict=True
        ):
            if ns != nt:
                raise RuntimeError(f"teacher and policy parameters differ: {ns} vs {nt}")
            yield nt, ps, pt

    @torch.no_grad()
    def after_optimizer_step(self, optimizer_steps: int) -> None:
        """Blend (ema) or copy (periodic, every `update_every` steps) the policy into the teacher; local to each
        rank's partitions (no collective)."""
        if self.kind == "ema":
            for i, (_, ps, pt) in enumerate(self._pairs()):
                dst = shard(pt)
                if self._shadow is None:
                    dst.lerp_(fp32_master(ps).to(dst.dtype), self.ema_rate)
                else:
                    self._shadow[i].lerp_(fp32_master(ps).to(self._shadow[i].device), self.ema_rate)
                    dst.copy_(self._shadow[i])
        elif self.kind == "periodic" and optimizer_steps % self.update_every == 0:
            for _, ps, pt in self._pairs():
                shard(pt).copy_(fp32_master(ps))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's teacher partitions by parameter name (the fp32 shadow where there is one)."""
        named = [(n, shard(p)) for n, p in self.engine.module.named_parameters()]
        if self._shadow is not None:
            named = [(n, s) for (n, _), s in zip(named, self._shadow, strict=True)]
        return {n: t.detach().clone() for n, t in named}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, (n, p) in enumerate(self.engine.module.named_parameters()):
            if n not in state:
                raise KeyError(f"the teacher checkpoint has no {n!r}: it was written for another model")
            shard(p).copy_(state[n])
            if self._shadow is not None:
                self._shadow[i].copy_(state[n])

    def save(self, ckpt_dir: Path, *, rank: int) -> None:
        if self.has_state:
            torch.save(self.state_dict(), Path(ckpt_dir) / f"teacher_rank_{rank:05d}.pt")

    def load(self, ckpt_dir: Path, *, rank: int) -> None:
        if not self.has_state:
            return
        f = Path(ckpt_dir) / f"teacher_rank_{rank:05d}.pt"
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: the checkpoint was written without this teacher")
        self.load_state_dict(torch.load(f, map_location="cpu"))
