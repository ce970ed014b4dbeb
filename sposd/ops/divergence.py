"""Per-token divergences between a teacher and a student on the same tokens (spec/ALGORITHMS.md 0.3-0.4).

S = softmax(z_S / tau), T = softmax(z_T / tau) at each completion position; the teacher is always stop-gradient.

    fkl     KL(T || S) = sum_v T (log T - log S)
    rkl     KL(S || T) = sum_v S (log S - log T)
    jsd(b)  M = b T + (1 - b) S;  b KL(T || M) + (1 - b) KL(S || M);  b = 0 -> fkl, b = 1 -> rkl
            (the OPSD / SDPO code convention, not the mathematical limit, which is 0)

Full-vocabulary divergences never hold a [B, T, V] temporary besides the returned gradient:
`per_token_divergence(support="full")` is a custom autograd function that works in a few [chunk, V] fp32 blocks
and recomputes in backward with the analytic gradients w.r.t. z = logits / tau (then / tau):

    fkl:  dD/dz_S = S - T
    rkl:  dD/dz_S = S (log S - log T - D)
    jsd:  dD/dz_S = (1 - b) S (log S - log M - KL(S || M))    (dD/dS = (1 - b) log(S / M), then the softmax Jacobian)

Legend: B rows, T completion positions, V vocabulary, K support size of a top-k divergence, N positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.ops.divergence_blocks import (
    STAT_KEYS,
    _acc,
    _block_rows,
    _check_clip,
    _floor,
    _plogr,
    _scaled_,
    _spans,
    _zero_beyond_lengths_,
    block_buffers,
    block_divergence,
    block_divergence_grad,
)
from sposd.ops.fused import BlockRule, per_position

DIVERGENCES = ("fkl", "rkl", "jsd")
SUPPORTS = ("full", "teacher_topk", "student_topk_tail")


def resolve_divergence(kind: str, beta: float) -> tuple[str, float]:
    """jsd with beta 0 -> ("fkl", 0.0), beta 1 -> ("rkl", 1.0) (code convention); otherwise unchanged."""
    if kind not in DIVERGENCES:
        raise ValueError(f"divergence {kind!r} is not one of {list(DIVERGENCES)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if kind == "jsd" and beta == 0.0:
        return "fkl", 0.0
    if kind == "jsd" and beta == 1.0:
        return "rkl", 1.0
    return kind, beta


def divergence_from_logprobs(
    s_logp_NK: Tensor, t_logp_NK: Tensor, *, kind: str, beta: float = 0.5, element_clip: float | None = None
) -> Tensor:
    """Divergence over the last dim from log-probs on a common support (plain autograd; teacher detached).

    Args:
        s_logp_NK: student log-probs.
        t_logp_NK: teacher log-probs (detached here).
        kind, beta: "fkl" | "rkl" | "jsd" with its beta.
        element_clip: clamp each per-entry term to <= element_clip before the sum (OPSD-v3's clip); None = off.
    Returns: D_N.
    """
    return _elements(s_logp_NK, t_logp_NK, kind=kind, beta=beta, element_clip=element_clip).sum(-1)


def _elements(s_logp_NK: Tensor, t_logp_NK: Tensor, *, kind: str, beta: float, element_clip: float | None) -> Tensor:
    """The per-entry terms of the divergence (their sum over the last dim is D), clamped when element_clip."""
    kind, beta = resolve_divergence(kind, beta)
    ls, lt = s_logp_NK, t_logp_NK.detach()
    if kind == "fkl":
        e = _plogr(lt.exp(), lt - ls)
    elif kind == "rkl":
        e = _plogr(ls.exp(), ls - lt)
    else:
        # floored so an entry where both are -inf gets a finite log M (logaddexp's backward is NaN at (-inf, -inf))
        floor = _floor(ls.dtype)
        lm = torch.logaddexp(lt.clamp(min=floor) + math.log(beta), ls.clamp(min=floor) + math.log1p(-beta))
        e = beta * _plogr(lt.exp(), lt - lm) + (1 - beta) * _plogr(ls.exp(), ls - lm)
    return e if element_clip is None else e.clamp(max=element_clip)


def naive_divergence(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    *,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    clip: float | None = None,
    clip_mode: str = "token",
) -> Tensor:
    """Reference: full fp32 log-softmax of both models, then the formula with autograd (OPSD's way). D_BT.

    clip_mode "element" clamps the [B, T, V] per-entry terms before the sum (OPSD-v3's `jsd.clamp(max=c)` on
    F.kl_div(..., reduction="none")); "token" clamps D_t.
    """
    _check_clip(clip, clip_mode)
    acc = _acc(student_logits_BTV.dtype)
    ls = torch.log_softmax(student_logits_BTV.to(acc) / temperature, dim=-1)
    lt = torch.log_softmax(teacher_logits_BTV.detach().to(acc) / temperature, dim=-1)
    element = clip if clip_mode == "element" else None
    D = divergence_from_logprobs(ls, lt, kind=kind, beta=beta, element_clip=element)
    return D.clamp(max=clip) if clip is not None and clip_mode == "token" else D


class _FullVocabDivergence(torch.autograd.Function):
    """Chunked full-vocabulary divergence over a [B, T, V] logits tensor, block by block (`block_divergence`).

    Forward and backward each work in a few preallocated [chunk, V] blocks of the accumulation dtype (3, or 5 for
    jsd) and write the one [B, T, V] gradient chunk by chunk. Saves its inputs (references) and a [B, T, 2]
    statistic. Returns D_BT and the (non-differentiable) per-position statistics [B, T, 3] (zeros without stats).
    """

    @staticmethod
    def forward(ctx, s_BTV, t_BTV, lengths, kind, beta, tau, chunk, clip, clip_mode, with_stats):
        acc = _acc(s_BTV.dtype)
        B, T, V = s_BTV.shape
        D_BT, saved_BT2 = s_BTV.new_zeros(B, T, dtype=acc), s_BTV.new_zeros(B, T, 2, dtype=acc)
        stats_BT3 = s_BTV.new_zeros(B, T, len(STAT_KEYS), dtype=acc)
        buf = s_BTV.new_empty(block_buffers(kind), _block_rows(lengths, T, chunk), V, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            D_BT[b, sl], saved_BT2[b, sl], st = block_divergence(
                s_BTV[b, sl],
                t_BTV[b, sl],
                kind=kind,
                beta=beta,
                tau=tau,
                clip=clip,
                clip_mode=clip_mode,
                with_stats=with_stats,
                work=buf,
            )
            if st is not None:
                stats_BT3[b, sl] = st
        ctx.save_for_backward(s_BTV, t_BTV, saved_BT2)
        ctx.args = (lengths, kind, beta, tau, chunk, clip, clip_mode)
        ctx.mark_non_differentiable(stats_BT3)
        return D_BT, stats_BT3

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_BT, _g_stats):
        s_BTV, t_BTV, saved_BT2 = ctx.saved_tensors
        lengths, kind, beta, tau, chunk, clip, clip_mode = ctx.args
        B, T, V = s_BTV.shape
        grad = _zero_beyond_lengths_(torch.empty(s_BTV.shape, dtype=s_BTV.dtype, device=s_BTV.device), lengths)
        buf = s_BTV.new_empty(block_buffers(kind), _block_rows(lengths, T, chunk), V, dtype=saved_BT2.dtype)
        for b, sl in _spans(lengths, T, chunk):
            grad[b, sl] = block_divergence_grad(
                s_BTV[b, sl],
                t_BTV[b, sl],
                saved_BT2[b, sl],
                g_BT[b, sl],
                kind=kind,
                beta=beta,
                tau=tau,
                clip=clip,
                clip_mode=clip_mode,
                work=buf,
            )
        return grad, None, None, None, None, None, None, None, None, None


class _GatheredLogSoftmax(torch.autograd.Function):
    """log softmax(z / tau) over all V, read at K indices per position; `_TokenLogprob` with K tokens.

    Saves the logits (reference), the indices and the [B, T] logsumexp; backward writes
    grad z = (scatter(g) - softmax(z / tau) sum_k g) / tau chunk by chunk into one gradient.
    """

    @staticmethod
    def forward(ctx, z_BTV, idx_BTK, lengths, tau, chunk):
        acc = _acc(z_BTV.dtype)
        B, T, V = z_BTV.shape
        lse_BT = z_BTV.new_zeros(B, T, dtype=acc)
        buf = z_BTV.new_empty(_block_rows(lengths, T, chunk), V, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            lse_BT[b, sl] = torch.logsumexp(_scaled_(buf[: sl.stop - sl.start], z_BTV[b, sl], tau), -1)
        ctx.save_for_backward(z_BTV, idx_BTK, lse_BT)
        ctx.args = (lengths, tau, chunk)
        return z_BTV.gather(-1, idx_BTK).to(acc) / tau - lse_BT[..., None]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_BTK):
        z_BTV, idx_BTK, lse_BT = ctx.saved_tensors
        lengths, tau, chunk = ctx.args
        B, T, V = z_BTV.shape
        grad = _zero_beyond_lengths_(torch.empty(z_BTV.shape, dtype=z_BTV.dtype, device=z_BTV.device), lengths)
        buf = z_BTV.new_empty(_block_rows(lengths, T, chunk), V, dtype=lse_BT.dtype)
        for b, sl in _spans(lengths, T, chunk):
            g_NK = g_BTK[b, sl].to(lse_BT.dtype)
            p = _scaled_(buf[: sl.stop - sl.start], z_BTV[b, sl], tau).sub_(lse_BT[b, sl, None]).exp_()
            d = p.mul_(-g_NK.sum(-1, keepdim=True)).scatter_add_(-1, idx_BTK[b, sl], g_NK)
            torch.mul(d, 1.0 / tau, out=grad[b, sl])
        return grad, None, None, None, None


def _topk_indices(logits_BTV: Tensor, k: int, lengths: list[int], chunk: int) -> Tensor:
    """Top-k vocabulary indices per valid position (no grad); positions beyond a row's length get 0..k-1."""
    B, T, V = logits_BTV.shape
    k = min(k, V)
    idx_BTK = torch.arange(k, device=logits_BTV.device).expand(B, T, k).clone()
    with torch.no_grad():
        for b, sl in _spans(lengths, T, chunk):
            idx_BTK[b, sl] = logits_BTV[b, sl].topk(k, dim=-1).indices
    return idx_BTK


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)), stable; x is clamped to <= -1e-7 first (as SDPO's tail bucket does)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class _FullVocabRule(BlockRule):
    """The full-vocabulary divergence on HiddenLogits: `block_divergence` on each recomputed [n, V] block, saving
    its per-position values; backward from `block_divergence_grad` (no second run of the op's forward)."""

    def __init__(self, kind: str, beta: float, tau: float, clip, clip_mode: str, with_stats: bool) -> None:
        self.kw = dict(kind=kind, beta=beta, tau=tau, clip=clip, clip_mode=clip_mode)
        self.with_stats = with_stats

    def forward(self, z, per_pos):
        s, t = z["student_logits_BTV"], z["teacher_logits_BTV"]
        D_n, saved_n2, st_n3 = block_divergence(s, t, with_stats=self.with_stats, **self.kw)
        stats_n3 = st_n3 if st_n3 is not None else D_n.new_zeros(D_n.shape[0], len(STAT_KEYS))
        return [D_n, stats_n3], saved_n2

    def backward(self, z, per_pos, saved_nK, grads):
        if grads[0] is None:
            return {}
        s, t = z["student_logits_BTV"], z["teacher_logits_BTV"]
        return {"student_logits_BTV": block_divergence_grad(s, t, saved_nK, grads[0], **self.kw)}


def _full_vocab_rule(a: dict) -> BlockRule | None:
    if a["support"] != "full":
        return None
    kind, beta = resolve_divergence(a["kind"], a["beta"])
    return _FullVocabRule(kind, beta, a["temperature"], a["clip"], a["clip_mode"], a["with_stats"])


def per_token_divergence(student_logits_BTV: Tensor, teacher_logits_BTV: Tensor, **options) -> Tensor:
    """D_t between softmax(teacher / tau) and softmax(student / tau) at every position: `divergence_parts`'s D_BT
    (its keyword options; no statistics)."""
    return divergence_parts(student_logits_BTV, teacher_logits_BTV, **options, with_stats=False)[0]


def divergence_with_stats(
    student_logits_BTV: Tensor, teacher_logits_BTV: Tensor, **options
) -> tuple[Tensor, dict[str, Tensor]]:
    """`divergence_parts` (its keyword options) with the statistics as a dict: stats[k] of shape [B, T] for k in
    STAT_KEYS (empty when with_stats=False)."""
    with_stats = options.pop("with_stats", True)
    D_BT, st_BT3 = divergence_parts(student_logits_BTV, teacher_logits_BTV, **options, with_stats=with_stats)
    return D_BT, ({k: st_BT3[..., i] for i, k in enumerate(STAT_KEYS)} if with_stats else {})


@per_position(logits=("student_logits_BTV", "teacher_logits_BTV"), lengths="lengths_B", rule=_full_vocab_rule)
def divergence_parts(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    *,
    kind: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    support: str = "full",
    topk: int = 50,
    lengths_B: Tensor | None = None,
    chunk_tokens: int = 512,
    clip: float | None = None,
    clip_mode: str = "token",
    with_stats: bool = True,
) -> tuple[Tensor, Tensor]:
    """D_t between softmax(teacher / tau) and softmax(student / tau) at every position (fp32; fp64 for fp64), and
    per-position statistics; tensors only, so that it also runs block by block on `HiddenLogits` (`sposd.ops.fused`).

    Differentiable w.r.t. the student logits only. Positions t >= lengths_B[b] are not computed: D = 0 there,
    with zero gradient.

    Args:
        student_logits_BTV: student logits (any float dtype; may be a strided view: it is never copied whole).
        teacher_logits_BTV: teacher logits at the same positions (detached).
        kind, beta: "fkl" | "rkl" | "jsd" (beta 0 / 1 -> fkl / rkl).
        temperature: divides both logits.
        support: "full" (chunked custom autograd), "teacher_topk" (teacher's top-k, both renormalised over k),
            "student_topk_tail" (student's top-k, full-vocab log-probs there plus a tail bucket, no renorm).
        topk: k of the top-k supports.
        lengths_B: valid positions per row (None = all T).
        chunk_tokens: positions per [chunk, V] fp32 block.
        clip, clip_mode: None = off; "token" min(D_t, clip); "element" each per-entry term clamped before the sum.
        with_stats: compute the statistics (else zeros).
    Returns: (D_BT, stats_BT3), the statistics stacked in STAT_KEYS order (no grad, 0 beyond each row's length):
        "clipped" (element mode: vocabulary entries clamped at that position; token mode: 1.0 where D_t was
        clipped), "teacher_entropy" H(T) and "student_entropy" H(S), on the divergence's support (top-k supports:
        over their k or k + 1 entries).
    """
    kind, beta = resolve_divergence(kind, beta)
    _check_clip(clip, clip_mode)
    if support not in SUPPORTS:
        raise ValueError(f"support {support!r} is not one of {list(SUPPORTS)}")
    if support != "full" and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    B, T, _ = student_logits_BTV.shape
    teacher = teacher_logits_BTV.detach()
    lengths = [T] * B if lengths_B is None else [min(max(int(n), 0), T) for n in lengths_B.tolist()]
    chunk = max(1, chunk_tokens)
    if support == "full":
        D_BT, st_BT3 = _FullVocabDivergence.apply(
            student_logits_BTV, teacher, lengths, kind, beta, temperature, chunk, clip, clip_mode, with_stats
        )
        return D_BT, st_BT3  # zeros without with_stats (the op fills them only when asked)
    acc = _acc(student_logits_BTV.dtype)
    if support == "teacher_topk":  # OPSD --top_k_loss: both renormalised over the teacher's top k
        idx_BTK = _topk_indices(teacher, topk, lengths, chunk)
        ls_BTK = torch.log_softmax(student_logits_BTV.gather(-1, idx_BTK).to(acc) / temperature, -1)
        lt_BTK = torch.log_softmax(teacher.gather(-1, idx_BTK).to(acc) / temperature, -1)
    else:  # SDPO add_tail: full-vocabulary log-probs at the student's top k, plus log(1 - their mass)
        idx_BTK = _topk_indices(student_logits_BTV.detach(), topk, lengths, chunk)
        ls_BTK = _GatheredLogSoftmax.apply(student_logits_BTV, idx_BTK, lengths, temperature, chunk)
        with torch.no_grad():
            lt_BTK = _GatheredLogSoftmax.apply(teacher, idx_BTK, lengths, temperature, chunk)
        ls_BTK = torch.cat([ls_BTK, _log1mexp(torch.logsumexp(ls_BTK, -1, keepdim=True))], -1)
        lt_BTK = torch.cat([lt_BTK, _log1mexp(torch.logsumexp(lt_BTK, -1, keepdim=True))], -1)
    # positions beyond a row's length (no top-k, no logsumexp was computed there): a uniform stand-in keeps
    # everything finite, then D = 0 with exactly zero gradient through the where
    n_B1 = torch.tensor(lengths, device=ls_BTK.device)[:, None]
    valid_BT1 = (torch.arange(T, device=ls_BTK.device) < n_B1)[..., None]
    uniform = -math.log(ls_BTK.shape[-1])
    ls_BTK, lt_BTK = torch.where(valid_BT1, ls_BTK, uniform), torch.where(valid_BT1, lt_BTK, uniform)
    element = clip if clip_mode == "element" else None
    e_BTK = _elements(ls_BTK, lt_BTK, kind=kind, beta=beta, element_clip=None)
    D_BT = (e_BTK if element is None else e_BTK.clamp(max=element)).sum(-1)
    if clip is not None and clip_mode == "token":
        D_BT = D_BT.clamp(max=clip)
    D_BT = torch.where(valid_BT1[..., 0], D_BT, 0.0)
    if not with_stats:
        return D_BT, D_BT.new_zeros(*D_BT.shape, len(STAT_KEYS)).detach()
    with torch.no_grad():
        v = valid_BT1[..., 0].to(acc)
        if clip is None:
            clipped = torch.zeros_like(v)
        elif clip_mode == "element":
            clipped = (e_BTK.detach() > clip).sum(-1).to(acc)
        else:
            clipped = (e_BTK.detach().sum(-1) > clip).to(acc)
        stats = {
            "clipped": clipped * v,
            "teacher_entropy": -_plogr(lt_BTK.exp(), lt_BTK).sum(-1) * v,
            "student_entropy": -_plogr(ls_BTK.detach().exp(), ls_BTK.detach()).sum(-1) * v,
        }
    return D_BT, torch.stack([stats[k] for k in STAT_KEYS], -1)
