"""The tensors and requests that pass between the algorithm, the learner and the loss terms (the algos layer's
contracts), apart from the Algorithm that produces and consumes them (`sposd.algos.base`).

Legend: B rows of a micro-batch, T completion tokens, D distilled rows, V vocabulary, K scoring contexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sposd.algos.distill.contexts import TeacherContext
    from sposd.ops.types import LossOut


@dataclass
class DistillBatch:
    """The distilled rows of a micro-batch (the first D rows), teacher and student aligned on completion positions.

    The logits are dense tensors or, from the learner, `sposd.ops.fused.HiddenLogits` (final hidden states and the
    output layer): indexing those computes [N, V] logits at the indexed positions alone, so a term that needs only
    some positions (TIP) never builds a dense logits tensor or its gradient. `student_logits_at` /
    `teacher_logits_at` read either.

    Attributes:
        student_logits_DTV: student logits predicting completion tokens (grad; may be a strided view), or None.
        teacher_logits_DTV: teacher logits at the same positions, from [teacher context | same tokens] (no grad).
        tokens_DT: the completion tokens.
        lengths_D: leading positions of each row that may receive the distillation loss (long).
        weight_D: per-row weight (prompt weight / normaliser share set by the algorithm's data hook).
        logp_DT, old_logp_DT: current / behaviour log-probs of the tokens (for the importance-ratio clip).
        token_weight_DT: per-token weights from the token pre-pass (`Algorithm.token_weights`), or None.
        partner_logits_DTV: the teacher's logits under each row's partner context (`TeacherRequest.partner`; rows
            without one: their teacher context again), when `Algorithm.needs_partner_pass`; else None.
    """

    student_logits_DTV: Tensor | None
    teacher_logits_DTV: Tensor | None
    tokens_DT: Tensor
    lengths_D: Tensor
    weight_D: Tensor
    logp_DT: Tensor
    old_logp_DT: Tensor
    token_weight_DT: Tensor | None = None
    partner_logits_DTV: Tensor | None = None

    def student_logits_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Student logits at the positions (rows[n], cols[n]): [N, V] (differentiable when the student is)."""
        assert self.student_logits_DTV is not None, "no student logits"
        return self.student_logits_DTV[rows, cols]

    @torch.no_grad()
    def teacher_logits_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Teacher logits at the positions (rows[n], cols[n]): [N, V]."""
        assert self.teacher_logits_DTV is not None, "no teacher logits"
        return self.teacher_logits_DTV[rows, cols]


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
        teacher_logp_KBT: teacher log-probs of each token under the K scoring contexts of every row
            (`Algorithm.num_score_contexts` > 0), no grad.
    """

    logp_BT: Tensor
    old_logp_BT: Tensor
    mask_BT: Tensor
    adv_B: Tensor
    ref_logp_BT: Tensor | None = None
    distill: DistillBatch | None = None
    teacher_logp_KBT: Tensor | None = None


@dataclass
class TeacherRequest:
    """What the algorithm asks for one completion: a teacher shown a privileged context, scoring its tokens.

    Attributes:
        context: the teacher context (its `text` is the privileged text: reference, witness, partial reference...).
        weight: per-token weight of this completion (prompt weight, divided by the prompt's selected-token count
            under "prompt_mean").
        num_positions: leading completion positions that receive the loss.
        units: this completion's share of the global normaliser (1 / #targets of its prompt under
            "prompt_mean", its selected-token count under "token_mean"; times the prompt weight under
            prompt_weight_norm "batch_mean").
        partner: a second teacher context whose logits the term interpolates with (PAINT's full-solution teacher,
            `DistillBatch.partner_logits_DTV`), or None.
    """

    context: TeacherContext
    weight: float
    num_positions: int
    units: float
    partner: TeacherContext | None = None

    @property
    def privileged(self) -> str:
        return self.context.text


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
