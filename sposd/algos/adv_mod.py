"""Advantage modifiers of the RL term and their data hook (spec sections 6 CEPO, 11 ACE, 12 G-OPD / ExOPD).

    data hook (`score_requests`, per step, on groups): the K teacher contexts of each completion
        cepo   answer_contrast: [student prompt ids | " {gold answer}"] and [student prompt ids | " {rejected answer}"]
        gopd   reference_solution: the privileged (OPSD-wrapped) reference solution
    learner: the teacher's log-prob of every sampled token under each context -> PolicyBatch.teacher_logp_KBT
    in the loss (`PolicyGradientTerm` calls the modifier on each micro-batch):
        cepo   per-token A_t = A [(1 - lam) + lam clip(exp(sign(A) delta_t), 1 - eps, 1 + eps)]
        ace    A <- A (1 + alpha softplus(c)) for A < 0, c from pi_old vs the frozen initial policy
        gopd   A_t = lam (log pi_T - log pi_base) - (log pi_old - log pi_base), pi_base = the initial policy

Legend: B rows of a micro-batch, T completion tokens, K scoring contexts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sposd.algos.distill.contexts import TeacherContext
from sposd.algos.schedule import coef_at
from sposd.ops.advantage_mods import ace_advantages, cepo_token_factors, confidence_shift, gopd_advantages
from sposd.text import extract_last_boxed
from sposd.types import RolloutGroup

if TYPE_CHECKING:  # the config and the batch contracts import this module's registries
    from sposd.algos.base import Normalizer, PolicyBatch
    from sposd.algos.config import AdvModCfg


def _rejected_answer(group: RolloutGroup, fallback_chars: int) -> str | None:
    """CEPO's negative answer: the boxed answer of the lowest-reward rejected rollout (ties: the first), or its
    first `fallback_chars` characters when it has none; None when every rollout was accepted."""

    rejected = [c for c in group.completions if not c.correct]
    if not rejected:
        return None
    worst = min(rejected, key=lambda c: c.reward)  # min keeps the first of equals
    answer = extract_last_boxed(worst.text)
    return answer if answer else worst.text[:fallback_chars]


def _answer_contrast(g: RolloutGroup, cfg: AdvModCfg) -> list[TeacherContext] | None:
    """CEPO: [student prompt | " {gold answer}"] and [student prompt | " {rejected answer}"] (the gold again when
    every rollout was accepted: delta = 0)."""
    pos = TeacherContext("splice", f" {g.prompt.answer}")
    wrong = _rejected_answer(g, cfg.cepo_fallback_chars)
    return [pos, pos if wrong is None else TeacherContext("splice", f" {wrong}")]


def _reference_solution(g: RolloutGroup, cfg: AdvModCfg) -> list[TeacherContext] | None:
    """G-OPD: the privileged (OPSD-wrapped) reference solution; None without one."""
    return [TeacherContext("wrap", g.prompt.solution)] if g.prompt.solution else None


# algo.adv_mod.context -> (the group's scoring contexts, whether it needs the dataset's reference solution)
SCORE_CONTEXTS: dict[str, tuple[Callable[[RolloutGroup, AdvModCfg], list[TeacherContext] | None], bool]] = {
    "answer_contrast": (_answer_contrast, False),
    "reference_solution": (_reference_solution, True),
}


def score_requests(groups: list[RolloutGroup], cfg: AdvModCfg) -> list[list[TeacherContext] | None]:
    """The scoring contexts of every completion, flat in group order (None: no context could be built; the learner
    then scores under the student's own prompt, which makes CEPO's weight 1 and G-OPD's teacher gain 0).

    Args:
        groups: verified, reward-shaped groups.
        cfg: the advantage-modifier config (cfg.scores must hold).
    """
    build = SCORE_CONTEXTS[cfg.context][0]
    out: list[list[TeacherContext] | None] = []
    for g in groups:
        out.extend([build(g, cfg)] * len(g.completions))
    return out


class AdvantageModifier:
    """Base: maps a micro-batch to the advantages its policy-gradient term uses ([B] or [B, T]) plus metrics.

    Metrics are this micro-batch's share of a batch mean (normalised by the global counts), so they add up over
    micro-batches and ranks like every other loss metric.
    """

    needs_ref = False
    num_contexts = 0  # teacher contexts scored per completion (a scoring pass when > 0)
    score_context: str | None = None  # the algo.adv_mod.context it scores

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class CepoModifier(AdvantageModifier):
    """CEPO: per-token reweighting of GRPO advantages by the gold-vs-rejected answer contrast of the teacher."""

    num_contexts, score_context = 2, "answer_contrast"

    def __init__(self, cfg: AdvModCfg) -> None:
        self.cfg = cfg
        self.lam = cfg.cepo_lambda

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        # CEPO's trainer uses lambda_init for the first step and lambda_init (1 - g / warmup) after step g, i.e.
        # a linear decay reaching 0 at step warmup + 1: coef_at's linear_decay over warmup + 1 steps, held at 0.
        if self.cfg.cepo_schedule == "linear":
            self.lam = coef_at(step, self.cfg.cepo_warmup_steps + 1, base=self.cfg.cepo_lambda, schedule="linear_decay")
        return {"adv_mod/lambda": self.lam}

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> tuple[Tensor, dict[str, Tensor]]:
        assert mb.teacher_logp_KBT is not None and mb.teacher_logp_KBT.shape[0] == 2, "CEPO scores two contexts"
        pos_BT, neg_BT = mb.teacher_logp_KBT[0], mb.teacher_logp_KBT[1]
        factor_BT = cepo_token_factors(mb.adv_B, pos_BT, neg_BT, lam=self.lam, eps=self.cfg.cepo_eps)
        adv_BT = mb.adv_B.to(factor_BT.dtype)[:, None] * factor_BT
        with torch.no_grad():
            m = mb.mask_BT
            metrics = {
                "adv_mod/delta_mean": ((pos_BT - neg_BT) * m).sum() / norm.num_tokens,
                "adv_mod/factor_mean": (factor_BT * m).sum() / norm.num_tokens,
            }
        return adv_BT, metrics


class AceModifier(AdvantageModifier):
    """ACE: negative advantages scaled by 1 + alpha softplus(confidence shift against the initial policy)."""

    needs_ref = True

    def __init__(self, cfg: AdvModCfg) -> None:
        self.cfg = cfg

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> tuple[Tensor, dict[str, Tensor]]:
        assert mb.ref_logp_BT is not None, "ACE needs PolicyBatch.ref_logp_BT (algo.needs_ref)"
        shift_B = confidence_shift(mb.old_logp_BT, mb.ref_logp_BT, mb.mask_BT, reduce=self.cfg.ace_reduce)
        adv_B = ace_advantages(mb.adv_B, shift_B, alpha=self.cfg.ace_alpha)
        with torch.no_grad():
            rows_B = (mb.mask_BT.sum(-1) > 0).float()
            metrics = {
                "adv_mod/shift_mean": (shift_B * rows_B).sum() / norm.num_seqs,
                "adv_mod/scaled_frac": ((mb.adv_B < 0).float() * rows_B).sum() / norm.num_seqs,
            }
        return adv_B, metrics


class GopdModifier(AdvantageModifier):
    """G-OPD / ExOPD: the per-token advantage is lam x the teacher's gain over the base model minus the policy's."""

    needs_ref = True
    num_contexts, score_context = 1, "reference_solution"

    def __init__(self, cfg: AdvModCfg) -> None:
        self.cfg = cfg

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> tuple[Tensor, dict[str, Tensor]]:
        assert mb.teacher_logp_KBT is not None and mb.teacher_logp_KBT.shape[0] == 1, "G-OPD scores one context"
        assert mb.ref_logp_BT is not None, "G-OPD needs PolicyBatch.ref_logp_BT (the base model)"
        t_BT = mb.teacher_logp_KBT[0]
        adv_BT = gopd_advantages(t_BT, mb.ref_logp_BT, mb.old_logp_BT, lam=self.cfg.gopd_lambda)
        with torch.no_grad():
            m = mb.mask_BT
            metrics = {
                "adv_mod/adv_mean": (adv_BT * m).sum() / norm.num_tokens,
                "adv_mod/teacher_gain_mean": ((t_BT - mb.ref_logp_BT) * m).sum() / norm.num_tokens,
            }
        return adv_BT, metrics


ADV_MODIFIERS: dict[str, type[AdvantageModifier] | None] = {"none": None}


def register_modifier(name: str, cls: type[AdvantageModifier]) -> None:
    if name in ADV_MODIFIERS:
        raise ValueError(f"advantage modifier {name!r} already registered")
    ADV_MODIFIERS[name] = cls


for _name, _cls in (("cepo", CepoModifier), ("ace", AceModifier), ("gopd", GopdModifier)):
    register_modifier(_name, _cls)


def make_modifier(cfg: AdvModCfg) -> AdvantageModifier | None:
    """The configured modifier (algo.adv_mod.kind), None for "none"."""
    cls = ADV_MODIFIERS[cfg.kind]
    return None if cls is None else cls(cfg)
