"""Which completion tokens carry the distillation loss, and with what weight (spec sections 4 and 8).

    TIP (HJSang/OPSD_OnPolicyDistillation losses.py `entropy_weighted_sample`):
        h_t = H(S_t) / ln|V|  (full vocabulary),   j_t = JSD_0.5(S_t, T_t) / ln 2  (full, or the teacher's top-K
        renormalised), both times `scale`;  q_t = max(h_t, 1e-8)^alpha * max(j_t, 1e-8)^gamma;
        keep k = max(1, floor(ratio * N)) of the N positions, drawn without replacement with probability prop. to q
        (all N when k >= N). Q3-only rule (project default thresholds): candidates are the positions with h below
        its batch median and j above its batch 80th percentile.
    SRPO (project default): w_t = exp(-H(T_t) / tau), normalised to mean 1 over the batch's distilled tokens.

All functions are no-grad statistics of logits (the teacher is never differentiated here, the student only through
the loss that uses the selection).

Legend: B rows, T positions, V vocabulary, N flattened positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.ops.divergence import per_token_divergence
from sposd.ops.fused import per_position

TIP_REGIONS = ("all", "q3")


@per_position(logits=("student_logits_NV", "teacher_logits_NV"))
@torch.no_grad()
def tip_token_stats(
    student_logits_NV: Tensor,
    teacher_logits_NV: Tensor,
    *,
    temperature: float = 1.0,
    jsd_topk: int = 0,
    scale: float = 1.0,
    chunk_tokens: int = 512,
) -> tuple[Tensor, Tensor]:
    """TIP's normalised student entropy and student-teacher JSD(0.5) at N positions (fp32).

    Args:
        student_logits_NV, teacher_logits_NV: logits at the same N positions.
        temperature: divides both logits (the loss temperature).
        jsd_topk: > 0 computes the JSD over the teacher's top-K logits, both renormalised (TIP's option).
        scale: multiplies both normalised statistics (TIP's `jsd_scale`).
        chunk_tokens: positions per [chunk, V] block.
    Returns: (h_N, j_N), h = H(S) / ln V * scale, j = max(JSD, 0) / ln 2 * scale.
    """
    N, V = student_logits_NV.shape
    acc = torch.promote_types(student_logits_NV.dtype, torch.float32)
    h_N = torch.empty(N, dtype=acc, device=student_logits_NV.device)
    j_N = torch.empty(N, dtype=acc, device=student_logits_NV.device)
    topk = 0 < jsd_topk < V
    for s in range(0, N, chunk_tokens):
        sl = slice(s, s + chunk_tokens)
        # a few [chunk, V] blocks, reused in place: log S, S, then (full-vocabulary JSD) log T, T, log M
        ls = torch.log_softmax(student_logits_NV[sl].to(acc) / temperature, -1)
        ps = ls.exp()
        h_N[sl] = -torch.einsum("nv,nv->n", ps, ls)
        if topk:
            continue
        lt = torch.log_softmax(teacher_logits_NV[sl].to(acc) / temperature, -1)
        pt = lt.exp()
        lm = torch.logaddexp(ls, lt).sub_(math.log(2.0))  # M = (S + T) / 2
        j_N[sl] = 0.5 * torch.einsum("nv,nv->n", ps, ls.sub_(lm)) + 0.5 * torch.einsum("nv,nv->n", pt, lt.sub_(lm))
        del ls, ps, lt, pt, lm
    if topk:  # over the teacher's top-K logits, both renormalised (TIP's jsd_topk)
        j_N = per_token_divergence(
            student_logits_NV[None],
            teacher_logits_NV[None],
            kind="jsd",
            beta=0.5,
            temperature=temperature,
            support="teacher_topk",
            topk=jsd_topk,
            chunk_tokens=chunk_tokens,
        )[0]
    return h_N / math.log(V) * scale, j_N.clamp(min=0.0) / math.log(2.0) * scale


def tip_weights(h_N: Tensor, j_N: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """q = max(h, 1e-8)^alpha * max(j, 1e-8)^gamma (gamma = 0 leaves the JSD out: pure entropy sampling)."""
    q_N = h_N.clamp(min=1e-8).pow(alpha)
    if gamma != 0.0:
        q_N = q_N * j_N.clamp(min=1e-8).pow(gamma)
    return q_N


def q3_thresholds(h_N: Tensor, j_N: Tensor, *, h_quantile: float = 0.5, j_quantile: float = 0.8) -> tuple[float, float]:
    """The Q3 region's thresholds over a batch of positions: (quantile of h, quantile of j)."""
    if h_N.numel() == 0:
        return 0.0, 0.0
    return float(torch.quantile(h_N.double(), h_quantile)), float(torch.quantile(j_N.double(), j_quantile))


def q3_mask(h_N: Tensor, j_N: Tensor, *, h_max: float, j_min: float) -> Tensor:
    """Low student entropy and high divergence ("overconfident and wrong"): h < h_max and j > j_min."""
    return (h_N < h_max) & (j_N > j_min)


def tip_num_kept(n: int, *, ratio: float, num_candidates: int | None = None) -> int:
    """How many positions TIP keeps out of n: max(1, floor(ratio n)) (n when that reaches n; 0 when n = 0), at most
    the number of candidates (Q3 rule)."""
    if n == 0:
        return 0
    k = min(n, max(1, int(math.floor(ratio * n + 1e-9))))
    return k if num_candidates is None else min(k, num_candidates)


def tip_select(
    weights_N: Tensor, *, ratio: float, candidates_N: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw `tip_num_kept` positions without replacement with probability proportional to the weights.

    Args:
        weights_N: q_t > 0 (`tip_weights`).
        ratio: retention ratio in (0, 1].
        candidates_N: bool mask of eligible positions (the Q3 region), None = all.
        generator: torch random generator (None = the global one).
    Returns: bool keep_N (every candidate when k >= #candidates).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    N = weights_N.numel()
    cand_N = torch.ones(N, dtype=torch.bool, device=weights_N.device) if candidates_N is None else candidates_N
    idx = cand_N.nonzero(as_tuple=True)[0]
    k = tip_num_kept(N, ratio=ratio, num_candidates=idx.numel())
    keep_N = torch.zeros(N, dtype=torch.bool, device=weights_N.device)
    if k >= idx.numel():
        keep_N[idx] = True
    elif k > 0:
        w = weights_N[idx].double().cpu()
        pick = torch.multinomial(w, k, replacement=False, generator=generator)
        keep_N[idx[pick.to(idx.device)]] = True
    return keep_N


def entropy_token_weights(h_N: Tensor, *, tau: float) -> Tensor:
    """SRPO's raw token weight exp(-H(T_t) / tau): confident teacher targets count more (normalise afterwards)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.exp(-h_N / tau)
