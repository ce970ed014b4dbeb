"""The Algorithm interface the loop and learner call, the tensors they pass it, and the name registry.

An Algorithm = group-level data hooks (reward shaping, group filtering, advantages, per-sample loss weights)
+ a loss that is the sum of composable `LossTerm`s. The GRPO family composes the RL base term
(`sposd.algos.grpo.rl_terms`); distillation methods add terms (teacher divergences, token selection, prompt
weights) next to it instead of branching on the algorithm name.

Legend: B rows of a micro-batch, T completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from sposd.algos.config import AlgoCfg
from sposd.ops.advantages import ragged_group_advantages
from sposd.ops.shaping import overlong_penalty
from sposd.ops.types import LossOut
from sposd.types import RolloutGroup


@dataclass
class PolicyBatch:
    """One micro-batch on the learner device.

    Attributes:
        logp_BT: current-policy log-prob of each completion token (requires grad).
        old_logp_BT: behaviour-policy log-prob (detached).
        mask_BT: 1.0 where a completion token receives loss (pads excluded, EOS included).
        adv_B: per-sequence advantage.
        ref_logp_BT: initial-policy log-prob, only when `Algorithm.needs_ref`.
    """

    logp_BT: Tensor
    old_logp_BT: Tensor
    mask_BT: Tensor
    adv_B: Tensor
    ref_logp_BT: Tensor | None = None


@dataclass
class Normalizer:
    """Global loss normalisers: the learner sums them over all micro-batches and ranks of one optimiser step.

    Attributes:
        num_tokens: loss tokens.
        num_seqs: sequences.
        max_len: L_const of "seq-mean-token-sum-norm".
    """

    num_tokens: float
    num_seqs: float
    max_len: int


class LossTerm(Protocol):
    """One additive piece of the loss; returns its weighted loss and its (unweighted) metrics."""

    needs_ref: bool

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut: ...


class Algorithm:
    """Base class: data hooks driven by `AlgoCfg`, loss = sum of the terms built by `build_terms`.

    Args:
        cfg: the validated algo config.
    """

    def __init__(self, cfg: AlgoCfg) -> None:
        self.cfg = cfg
        self.terms = self.build_terms()
        assert self.terms, f"{type(self).__name__}.build_terms() returned no loss terms"

    def build_terms(self) -> list[LossTerm]:
        """The loss terms this algorithm sums."""
        raise NotImplementedError

    @property
    def needs_ref(self) -> bool:
        """Whether the learner must supply `PolicyBatch.ref_logp_BT` (a frozen initial-policy copy)."""
        return any(t.needs_ref for t in self.terms)

    def shape_rewards(self, groups: list[RolloutGroup], *, max_new_tokens: int) -> None:
        """Set each `Completion.reward` in place: 1.0 if correct else 0.0, plus DAPO overlong shaping if on.

        Args:
            groups: verified groups (`Completion.correct` filled in).
            max_new_tokens: the generation budget L_max (overlong_buffer must not exceed it).
        """
        comps = [c for g in groups for c in g.completions]
        rewards = [1.0 if c.correct else 0.0 for c in comps]
        if self.cfg.overlong_buffer > 0 and comps:
            lengths_B = torch.tensor([len(c.token_ids) for c in comps], dtype=torch.float64)
            pen_B = overlong_penalty(
                lengths_B,
                max_len=max_new_tokens,
                cache_len=self.cfg.overlong_buffer,
                factor=self.cfg.overlong_penalty,
            )
            rewards = [r + p for r, p in zip(rewards, pen_B.tolist(), strict=True)]
        for c, r in zip(comps, rewards, strict=True):
            c.reward = r

    def filter_groups(self, groups: list[RolloutGroup]) -> list[RolloutGroup]:
        """DAPO dynamic sampling: keep only groups with mixed correctness (0 < pass rate < 1) when enabled.

        Mixedness is judged on `correct` (verl DAPO `filter_groups.metric=acc`), not on shaped rewards.
        """
        return [g for g in groups if g.is_mixed] if self.cfg.dynamic_sampling else list(groups)

    def advantages(self, groups: list[RolloutGroup]) -> list[float]:
        """Group-relative advantage of every completion, flat in group order, from `Completion.reward`."""
        adv_B = ragged_group_advantages(
            [g.rewards for g in groups], std_normalize=self.cfg.adv_std_norm, eps=self.cfg.adv_eps
        )
        return adv_B.tolist()

    def loss_mask_weight(self, groups: list[RolloutGroup]) -> list[float]:
        """Per-completion loss weight, flat in group order: 0.0 drops truncated ones when mask_truncated."""
        return [
            0.0 if self.cfg.mask_truncated and c.truncated else 1.0 for g in groups for c in g.completions
        ]

    def loss(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        """This micro-batch's share of the batch loss (sum of the terms) and their metrics.

        Args:
            mb: the micro-batch tensors.
            norm: global normalisers for the whole optimiser step.
        """
        outs = [term(mb, norm) for term in self.terms]
        metrics: dict[str, Tensor | float] = {}
        for out in outs:
            assert not metrics.keys() & out.metrics.keys(), (
                f"loss terms reuse metric names: {sorted(out.metrics)}"
            )
            metrics.update(out.metrics)
        return LossOut(sum((out.loss for out in outs[1:]), start=outs[0].loss), metrics)


ALGOS: dict[str, type[Algorithm]] = {}


def register_algo(name: str):
    """Class decorator: make `cls` available as `get_algo(name)`."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        if name in ALGOS:
            raise ValueError(f"algo {name!r} already registered by {ALGOS[name].__name__}")
        ALGOS[name] = cls
        return cls

    return deco


def get_algo(name: str) -> type[Algorithm]:
    """The Algorithm class registered under `name` (the config's `algo.name`)."""
    if name not in ALGOS:
        raise ValueError(f"unknown algo {name!r}; choose from {sorted(ALGOS)}")
    return ALGOS[name]
