"""The distillation signal at every position of a few distilled rows, computed with the loss's own op.

`per_position_signal` takes the student's and the teacher's logits (the learner's own `HiddenLogits` of the step,
handed over by `record.InspectTap`) and returns what `sposd inspect` shows: the divergence D_t the loss sums (the
distillation term's own per-token function, `DistillTerm.per_token`: divergence, support, clip and temperature as
configured), how much the clip changed it, both models' probability of the sampled token and their top
alternatives, and the token's loss weight. On policy (one optimiser step per batch) the values equal the loss's: the
importance-ratio clip is 1 there.

Legend: D distilled rows, T completion positions, V vocabulary, K alternatives per position, n positions of a block.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor

from sposd.ops.logprobs import entropy_from_logits
from sposd.ops.teacher_signal import entropy_mismatch_mask, interpolate_teacher_logits_


@torch.no_grad()
def per_position_signal(
    term,
    S,
    T_,
    tokens_DT: Tensor,
    lengths_D: Tensor,
    weight_D: Tensor,
    *,
    token_weight_DT: Tensor | None = None,
    partner=None,
    topk: int = 3,
) -> dict[str, Tensor]:
    """Per-position distillation signal of D rows.

    Args:
        term: the algorithm's `DistillTerm` (its config and temperature are the loss's).
        S, T_: student / teacher logits predicting each completion token, [D, T, V] (tensors or `HiddenLogits`).
        tokens_DT: the completion tokens. lengths_D: positions of each row that may receive the loss.
        weight_D: each row's distillation weight (`LearnerSample.distill_weight`).
        token_weight_DT: the learner's per-token weights from its batch-wide pre-pass (TIP, SRPO), or None.
        partner: the teacher's logits under each row's partner context (PAINT's full-solution interpolation).
        topk: K alternatives per position.
    Returns:
        div_DT        D_t as the loss sums it (after the clip; "distill/div_sum" is its sum over weighted positions)
        div_raw_DT    D_t without the clip (equal to div_DT without one)
        clipped_DT    element clip: vocabulary entries clamped at t; token clip: 1.0 where D_t was clamped
        weight_DT     the token's loss weight: the row's, at positions the selection keeps (0 elsewhere), times the
                      pre-pass token weight when there is one
        p_student_DT, p_teacher_DT   probability of the sampled token (at the loss temperature)
        student_top_DTK, teacher_top_DTK (ids, long) and student_topp_DTK, teacher_topp_DTK (probabilities)
    """
    cfg, tau = term.cfg, term.temperature
    D, T = tokens_DT.shape
    lengths_D = lengths_D.to(tokens_DT.device)
    pos_DT = torch.arange(T, device=tokens_DT.device)[None, :] < lengths_D[:, None]
    em_DT = None
    if cfg.interp_gamma > 0 or term.selection.needs_mismatch:  # as DistillTerm.__call__
        h_t = entropy_from_logits(T_, temperature=tau, chunk_tokens=cfg.chunk_tokens)
        h_s = entropy_from_logits(S, temperature=tau, chunk_tokens=cfg.chunk_tokens)
        em_DT = entropy_mismatch_mask(h_t, h_s, lengths_D, q=cfg.mismatch_q, sign=cfg.mismatch_sign)
        if cfg.interp_gamma > 0:
            other = S if cfg.interp_partner == "student" else partner
            assert other is not None, "interp_partner=full_solution_teacher needs the partner logits"
            interpolate_teacher_logits_(T_, other, em_DT, gamma=cfg.interp_gamma)
    keep_DT = term.selection.positions(pos_DT, em_DT)
    on_policy = torch.zeros(D, T, device=tokens_DT.device)  # logp = old logp: an importance ratio of 1
    _, div, stats = term.per_token(S, T_, tokens_DT, lengths_D, on_policy, on_policy)
    raw = div
    if cfg.clip_max is not None:
        unclipped = copy.copy(term)
        unclipped.cfg = replace(cfg, clip_max=None)
        _, raw, _ = unclipped.per_token(S, T_, tokens_DT, lengths_D, on_policy, on_policy)
    out = {
        "div_DT": div.float() * pos_DT,
        "div_raw_DT": raw.float() * pos_DT,
        "clipped_DT": stats["clipped"].float() * pos_DT,
        "weight_DT": keep_DT.float() * weight_D.to(keep_DT.device).float()[:, None],
    }
    if token_weight_DT is not None:
        out["weight_DT"] = out["weight_DT"] * token_weight_DT.to(keep_DT.device).float()
    out.update(_token_probs_and_top(S, T_, tokens_DT, tau=tau, topk=topk, chunk=cfg.chunk_tokens))
    return out


def _token_probs_and_top(S, T_, tokens_DT: Tensor, *, tau: float, topk: int, chunk: int) -> dict[str, Tensor]:
    """Both models' probability of the sampled token and their top-K alternatives, in [chunk, V] blocks."""
    D, T = tokens_DT.shape
    K = min(topk, S.shape[-1])
    out = {
        "p_student_DT": torch.zeros(D, T),
        "p_teacher_DT": torch.zeros(D, T),
        "student_top_DTK": torch.zeros(D, T, K, dtype=torch.long),
        "teacher_top_DTK": torch.zeros(D, T, K, dtype=torch.long),
        "student_topp_DTK": torch.zeros(D, T, K),
        "teacher_topp_DTK": torch.zeros(D, T, K),
    }
    flat_tokens = tokens_DT.reshape(-1)
    for s in range(0, D * T, max(1, chunk)):
        pos_n = torch.arange(s, min(s + chunk, D * T), device=tokens_DT.device)
        for who, logits in (("student", S), ("teacher", T_)):
            p_nV = torch.softmax(_block(logits, pos_n).float() / tau, dim=-1)
            top = p_nV.topk(K, dim=-1)
            rows = pos_n.cpu()
            out[f"p_{who}_DT"].view(-1)[rows] = p_nV.gather(-1, flat_tokens[pos_n][:, None])[:, 0].cpu()
            out[f"{who}_top_DTK"].view(-1, K)[rows] = top.indices.cpu()
            out[f"{who}_topp_DTK"].view(-1, K)[rows] = top.values.cpu()
    return out


def _block(logits, pos_n: Tensor) -> Tensor:
    """Logits [n, V] at flattened positions: a `HiddenLogits` block, or rows of a dense tensor."""
    if hasattr(logits, "block"):
        return logits.block(pos_n)
    return logits.reshape(-1, logits.shape[-1])[pos_n]
