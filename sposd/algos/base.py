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
class DistillBatch:
    """The distilled rows of a micro-batch (the first D rows), teacher and student aligned on completion positions.

    Attributes:
        student_logits_DTV: student logits predicting completion tokens (grad; may be a strided view).
        teacher_logits_DTV: teacher logits at the same positions, from [teacher context | same tokens] (no grad).
        tokens_DT: the completion tokens.
        lengths_D: leading positions of each row that may receive the distillation loss (long).
        weight_D: per-row weight (prompt weight / normaliser share set by the algorithm's data hook).
        logp_DT, old_logp_DT: current / behaviour log-probs of the tokens (for the importance-ratio clip).
    """

    student_logits_DTV: Tensor
    teacher_logits_DTV: Tensor
    tokens_DT: Tensor
    lengths_D: Tensor
    weight_D: Tensor
    logp_DT: Tensor
    old_logp_DT: Tensor


@dataclass
class PolicyBatch:
    """One micro-batch on the learner device.

    Attributes:
        logp_BT: current-policy log-prob of each completion token (requires grad).
        old_logp_BT: behaviour-policy log-prob (detached).
        mask_BT: 1.0 where a completion token receives loss (pads excluded, EOS included).
        adv_B: per-sequence advantage.
        ref_logp_BT: initial-policy log-prob, only when `Algorithm.needs_ref`.
        distill: teacher/student logits of the rows that have a teacher, only when `Algorithm.needs_teacher`.
    """

    logp_BT: Tensor
    old_logp_BT: Tensor
    mask_BT: Tensor
    adv_B: Tensor
    ref_logp_BT: Tensor | None = None
    distill: DistillBatch | None = None


@dataclass
class TeacherRequest:
    """What the algorithm asks for one completion: a teacher shown `privileged` text, scoring its tokens.

    Attributes:
        privileged: the text placed in the teacher's message (reference, witness or partial reference).
        weight: per-token weight of this completion (prompt weight, divided by the prompt's selected-token count
            under "prompt_mean").
        num_positions: leading completion positions that receive the loss.
        units: this completion's share of the global normaliser (1 / #targets of its prompt under
            "prompt_mean", its selected-token count under "token_mean").
    """

    privileged: str
    weight: float
    num_positions: int
    units: float


@dataclass
class Normalizer:
    """Global loss normalisers: the learner sums them over all micro-batches and ranks of one optimiser step.

    Attributes:
        num_tokens: loss tokens.
        num_seqs: sequences.
        max_len: L_const of "seq-mean-token-sum-norm".
        distill_units: denominator of the distillation term (sum of `LearnerSample.distill_units`).
    """

    num_tokens: float
    num_seqs: float
    max_len: int
    distill_units: float = 1.0


class LossTerm(Protocol):
    """One additive piece of the loss; returns its weighted loss and its (unweighted) metrics."""

    needs_ref: bool

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut: ...


class Algorithm:
    """Base class: data hooks driven by `AlgoCfg`, loss = sum of the terms built by `build_terms`.

    Args:
        cfg: the validated algo config.
    """

    def __init__(self, cfg: AlgoCfg, *, rollout_temperature: float = 1.0) -> None:
        self.cfg = cfg
        self.rollout_temperature = rollout_temperature
        self.terms = self.build_terms()
        assert self.terms, f"{type(self).__name__}.build_terms() returned no loss terms"
        self.distill_stats: dict[str, float] = {}

    def build_terms(self) -> list[LossTerm]:
        """The loss terms this algorithm sums: the RL base term (rl_coef > 0) and the distillation term."""
        from sposd.algos.distill import DistillTerm
        from sposd.algos.grpo import rl_terms

        terms = rl_terms(self.cfg) if self.cfg.rl_coef > 0 else []
        if self.cfg.distill.enabled:
            terms.append(DistillTerm(self.cfg.distill, temperature=self.rollout_temperature))
        return terms

    @property
    def needs_ref(self) -> bool:
        """Whether the learner must supply `PolicyBatch.ref_logp_BT` (a frozen initial-policy copy)."""
        return any(t.needs_ref for t in self.terms)

    @property
    def teacher_weights(self) -> str | None:
        """None without a distillation term, else "current" | "initial" | "ema" | "periodic"."""
        return self.cfg.distill.teacher if self.cfg.distill.enabled else None

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called by the loop before each training step (1-based): updates scheduled coefficients."""
        from sposd.algos.schedule import coef_at

        out: dict[str, float] = {}
        d = self.cfg.distill
        for term in self.terms:
            if hasattr(term, "coef"):
                term.coef = coef_at(
                    step,
                    total_steps,
                    base=d.coef,
                    schedule=d.coef_schedule,
                    warmup_steps=d.coef_warmup_steps,
                    final_ratio=d.coef_final_ratio,
                )
                out["distill/coef"] = term.coef
        return out

    def distill_requests(self, groups: list[RolloutGroup], *, cut_reference=None) -> list[TeacherRequest | None]:
        """Which completions get a teacher, with what privileged text and weight; flat in group order.

        Args:
            groups: verified, reward-shaped groups (the ones that go to the learner).
            cut_reference: (completion_ids, solution) -> partial solution text, for context "partial_solution".
        """
        from sposd.algos.distill import distill_requests

        if not self.cfg.distill.enabled:
            self.distill_stats = {}
            return [None] * sum(len(g.completions) for g in groups)
        reqs, self.distill_stats = distill_requests(groups, self.cfg.distill, cut_reference=cut_reference)
        return reqs

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
        return [0.0 if self.cfg.mask_truncated and c.truncated else 1.0 for g in groups for c in g.completions]

    def loss(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        """This micro-batch's share of the batch loss (sum of the terms) and their metrics.

        Args:
            mb: the micro-batch tensors.
            norm: global normalisers for the whole optimiser step.
        """
        outs = [term(mb, norm) for term in self.terms]
        metrics: dict[str, Tensor | float] = {}
        for out in outs:
            assert not metrics.keys() & out.metrics.keys(), f"loss terms reuse metric names: {sorted(out.metrics)}"
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
