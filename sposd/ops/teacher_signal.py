"""Teacher-signal ops beside the divergences: the sampled-token estimator, PAINT's entropy-mismatch positions and
logit interpolation, the stop-gradient top-k reverse KL ("Many Faces of OPD"), and the teacher's entropy on a
support (SRPO's token weights).

Legend: B rows, T completion positions, V vocabulary, K support size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.ops.divergence import SUPPORTS, _GatheredLogSoftmax, _log1mexp, _topk_indices
from sposd.ops.divergence_blocks import _acc, _plogr, _spans, lerp_logits
from sposd.ops.fused import HiddenLogits, per_position

MISMATCH_SIGNS = ("abs", "teacher_sharper", "student_sharper")


def sampled_token_loss(student_logp_BT: Tensor, teacher_logp_BT: Tensor) -> Tensor:
    """Single-sample reverse-KL estimator (tinker; OPSD --use_tinker_loss): -sg(log T(y) - log S(y)) log S(y)."""
    return -(teacher_logp_BT - student_logp_BT).detach() * student_logp_BT


def entropy_mismatch_mask(
    h_teacher_BT: Tensor, h_student_BT: Tensor, lengths_B: Tensor, *, q: float, sign: str = "abs"
) -> Tensor:
    """PAINT's sparse set: per row the top ceil(q * length) valid positions by entropy mismatch.

    Args:
        h_teacher_BT, h_student_BT: entropies.
        lengths_B: valid positions per row.
        q: fraction in (0, 1].
        sign: "abs" |H_T - H_S|; "teacher_sharper" H_S - H_T; "student_sharper" H_T - H_S.
    Returns: bool mask_BT (ties: the earlier position first).
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    if sign not in MISMATCH_SIGNS:
        raise ValueError(f"sign {sign!r} is not one of {list(MISMATCH_SIGNS)}")
    d = h_teacher_BT - h_student_BT
    m_BT = d.abs() if sign == "abs" else (-d if sign == "teacher_sharper" else d)
    B, T = m_BT.shape
    out = torch.zeros(B, T, dtype=torch.bool, device=m_BT.device)
    for b, n in enumerate(int(x) for x in lengths_B.tolist()):
        n = min(n, T)
        if n <= 0:
            continue
        k = min(n, math.ceil(q * n - 1e-9))
        order = torch.sort(m_BT[b, :n], descending=True, stable=True).indices
        out[b, order[:k]] = True
    return out


@torch.no_grad()
def interpolate_teacher_logits_(
    teacher_logits_BTV: Tensor, student_logits_BTV: Tensor, mask_BT: Tensor, *, gamma: float, chunk_tokens: int = 512
) -> None:
    """PAINT's energy-space interpolation, in place: z_T <- (1 - gamma) z_T + gamma sg(z_S) at masked positions."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if isinstance(teacher_logits_BTV, HiddenLogits):  # recorded, applied to each block the ops compute
        teacher_logits_BTV.interpolate_(student_logits_BTV, mask_BT, gamma)
        return
    rows, cols = mask_BT.nonzero(as_tuple=True)
    for s in range(0, rows.numel(), chunk_tokens):
        r, c = rows[s : s + chunk_tokens], cols[s : s + chunk_tokens]
        teacher_logits_BTV[r, c] = lerp_logits(teacher_logits_BTV[r, c], student_logits_BTV[r, c], gamma)


SG_TOPK_FROM = ("student", "teacher")


@per_position(logits=("student_logits_BTV", "teacher_logits_BTV"), lengths="lengths_B")
def sg_topk_reverse_kl(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    *,
    topk: int,
    index_from: str = "student",
    temperature: float = 1.0,
    lengths_B: Tensor | None = None,
    chunk_tokens: int = 512,
) -> tuple[Tensor, Tensor]:
    """The stop-gradient top-K reverse-KL objective ("Many Faces of OPD" fix; spec section 13, project default form).

        L_t = sum_{v in K_t} sg(S(v) (log S(v) - log T(v))) log S(v),   K_t = top-k of the student (or teacher)

    with S, T full-vocabulary softmaxes (no renormalisation over K). Its gradient is the K-truncation of the
    unbiased reverse-KL gradient sum_v S (log S - log T) grad log S, without the mass-pushing term
    sum_{v in K} S grad log S = grad S(K) that differentiating the truncated KL itself would add.

    Args:
        student_logits_BTV, teacher_logits_BTV: logits at the same positions (teacher detached).
        topk: |K_t|.
        index_from: "student" or "teacher" top-k.
        temperature: divides both logits.
        lengths_B: valid positions per row (None = all T); beyond them L = 0 with zero gradient.
        chunk_tokens: positions per [chunk, V] block of the log-normaliser.
    Returns: (loss_BT, kl_BT): the surrogate (differentiable) and the truncated reverse KL
        sum_{v in K} S (log S - log T) (detached, for metrics).
    """
    if index_from not in SG_TOPK_FROM:
        raise ValueError(f"index_from {index_from!r} is not one of {list(SG_TOPK_FROM)}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    B, T, _ = student_logits_BTV.shape
    teacher = teacher_logits_BTV.detach()
    lengths = [T] * B if lengths_B is None else [min(max(int(n), 0), T) for n in lengths_B.tolist()]
    chunk = max(1, chunk_tokens)
    src = student_logits_BTV.detach() if index_from == "student" else teacher
    idx_BTK = _topk_indices(src, topk, lengths, chunk)
    ls_BTK = _GatheredLogSoftmax.apply(student_logits_BTV, idx_BTK, lengths, temperature, chunk)
    valid_BT = torch.arange(T, device=ls_BTK.device)[None, :] < torch.tensor(lengths, device=ls_BTK.device)[:, None]
    with torch.no_grad():
        lt_BTK = _GatheredLogSoftmax.apply(teacher, idx_BTK, lengths, temperature, chunk)
        ls_live = torch.where(valid_BT[..., None], ls_BTK, -math.inf)  # beyond a row's length: no normaliser
        coef_BTK = _plogr(ls_live.exp(), ls_live - lt_BTK)
    loss_BT = torch.where(valid_BT, (coef_BTK * ls_BTK).sum(-1), 0.0)
    kl_BT = torch.where(valid_BT, coef_BTK.sum(-1), 0.0)
    return loss_BT, kl_BT


@torch.no_grad()
@per_position(logits=("student_logits_BTV", "teacher_logits_BTV"), lengths="lengths_B")
def teacher_support_entropy(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    *,
    support: str = "full",
    topk: int = 50,
    temperature: float = 1.0,
    lengths_B: Tensor | None = None,
    chunk_tokens: int = 512,
) -> Tensor:
    """Entropy of the teacher's distribution on the support a divergence uses (SRPO's token weights).

    full: H(T) over the vocabulary; teacher_topk: H of T renormalised over its top k; student_topk_tail: H of the
    (k+1)-entry distribution [T at the student's top k, 1 - their mass] (SDPO's tail bucket). Returns H_BT (fp32),
    0 beyond each row's length.
    """
    if support not in SUPPORTS:
        raise ValueError(f"support {support!r} is not one of {list(SUPPORTS)}")
    B, T, _ = student_logits_BTV.shape
    lengths = [T] * B if lengths_B is None else [min(max(int(n), 0), T) for n in lengths_B.tolist()]
    chunk = max(1, chunk_tokens)
    acc = _acc(teacher_logits_BTV.dtype)
    if support == "full":
        H_BT = teacher_logits_BTV.new_zeros(B, T, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            lt = torch.log_softmax(teacher_logits_BTV[b, sl].to(acc) / temperature, -1)
            H_BT[b, sl] = -(lt.exp() * lt).sum(-1)
        return H_BT
    if support == "teacher_topk":
        idx_BTK = _topk_indices(teacher_logits_BTV, topk, lengths, chunk)
        lt_BTK = torch.log_softmax(teacher_logits_BTV.gather(-1, idx_BTK).to(acc) / temperature, -1)
    else:
        idx_BTK = _topk_indices(student_logits_BTV, topk, lengths, chunk)
        lt_BTK = _GatheredLogSoftmax.apply(teacher_logits_BTV, idx_BTK, lengths, temperature, chunk)
        lt_BTK = torch.cat([lt_BTK, _log1mexp(torch.logsumexp(lt_BTK, -1, keepdim=True))], -1)
    valid_BT = torch.arange(T, device=lt_BTK.device)[None, :] < torch.tensor(lengths, device=lt_BTK.device)[:, None]
    H_BT = -_plogr(lt_BTK.exp(), lt_BTK).sum(-1)
    return torch.where(valid_BT, H_BT, 0.0)
