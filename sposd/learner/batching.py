"""Turning completions into learner tensors: the prompt|completion layout (micro-batches: `learner.plan`).

Layout (verl's): each row is [left-padded prompt | right-padded completion]. Every completion then starts at
the same column P, so logits[:, P-1 : P-1+T] line up with the completion tokens of all rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LearnerSample:
    """One completion as the learner needs it.

    Attributes:
        prompt_ids: student context tokens.
        completion_ids: sampled tokens (EOS included when generated).
        adv: sequence-level advantage.
        loss_weight: 0.0 drops the completion from the loss (e.g. overlong filtering), 1.0 keeps it.
        rollout_logprobs: the engine's log-prob of each completion token, for diagnostics.
        teacher_prompt_ids: the teacher's context c_T (None = no distillation for this completion).
        distill_weight: per-token weight of the distillation loss on this completion.
        distill_len: leading completion positions that may receive the distillation loss.
        distill_units: this completion's share of the distillation normaliser.
        score_prompt_ids: the K teacher contexts whose per-token log-probs of this completion an advantage
            modifier needs (None: score under the student's own prompt).
        partner_prompt_ids: a second teacher context whose logits the distillation term interpolates with (PAINT's
            full solution), or None.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    adv: float
    loss_weight: float = 1.0
    rollout_logprobs: list[float] | None = None
    teacher_prompt_ids: list[int] | None = None
    distill_weight: float = 0.0
    distill_len: int = 0
    distill_units: float = 0.0
    score_prompt_ids: list[list[int]] | None = None
    partner_prompt_ids: list[int] | None = None

    @property
    def distilled(self) -> bool:
        return self.teacher_prompt_ids is not None and self.distill_weight > 0 and self.distill_len > 0


def collate(samples: list[LearnerSample], *, pad_id: int, share_prompts: bool = False) -> dict[str, Tensor]:
    """Build one micro-batch.

    Args:
        share_prompts: also index the distinct prompts (`prompt_rows_U`, `prompt_of_B`): the passes then run
            each distinct prompt once and its completions on its cached keys and values (`passes.hidden_states`).
    Returns:
        input_ids_BL, attention_mask_BL, position_ids_BL with L = P + T;
        completion_ids_BT, mask_BT (1.0 on real completion tokens of kept samples), adv_B,
        rollout_logp_BT (0 where unknown), has_rollout_logp_B;
        with share_prompts: prompt_rows_U (the first row of each distinct prompt) and prompt_of_B (each row's
        distinct prompt, an index into prompt_rows_U).
    """
    B = len(samples)
    P = max(len(s.prompt_ids) for s in samples)
    T = max(max(len(s.completion_ids) for s in samples), 1)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros(B, P + T, dtype=torch.long)
    comp = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T)
    rlp = torch.zeros(B, T)
    has_rlp = torch.zeros(B, dtype=torch.bool)
    for i, s in enumerate(samples):
        p, t = len(s.prompt_ids), len(s.completion_ids)
        ids[i, P - p : P] = torch.tensor(s.prompt_ids)
        attn[i, P - p : P + t] = 1
        if t:
            ids[i, P : P + t] = torch.tensor(s.completion_ids)
            comp[i, :t] = torch.tensor(s.completion_ids)
            mask[i, :t] = float(s.loss_weight > 0)
        if s.rollout_logprobs is not None and len(s.rollout_logprobs) == t:
            rlp[i, :t] = torch.tensor(s.rollout_logprobs)
            has_rlp[i] = True
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    shared = distinct_prompts(samples) if share_prompts else {}
    return {
        **shared,
        "input_ids_BL": ids,
        "attention_mask_BL": attn,
        "position_ids_BL": pos,
        "completion_ids_BT": comp,
        "mask_BT": mask,
        "adv_B": torch.tensor([s.adv for s in samples], dtype=torch.float32),
        "rollout_logp_BT": rlp,
        "has_rollout_logp_B": has_rlp,
    }


def distinct_prompts(samples: list[LearnerSample]) -> dict[str, Tensor]:
    """prompt_rows_U: the first row of each distinct prompt (in order of appearance); prompt_of_B: each row's."""
    first: dict[tuple[int, ...], int] = {}
    of_B = [first.setdefault(tuple(s.prompt_ids), len(first)) for s in samples]
    rows_U = [0] * len(first)
    for b in reversed(range(len(samples))):
        rows_U[of_B[b]] = b
    return {"prompt_rows_U": torch.tensor(rows_U, dtype=torch.long), "prompt_of_B": torch.tensor(of_B)}
