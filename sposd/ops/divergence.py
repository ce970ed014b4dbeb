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

from sposd.ops.fused import BlockRule, HiddenLogits, per_position

DIVERGENCES = ("fkl", "rkl", "jsd")
SUPPORTS = ("full", "teacher_topk", "student_topk_tail")
MISMATCH_SIGNS = ("abs", "teacher_sharper", "student_sharper")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _floor(dtype: torch.dtype) -> float:
    """Finite stand-in for -inf logits (masked tokens), so 0 * log-ratio stays 0 instead of NaN."""
    return max(-1e30, torch.finfo(dtype).min)


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


def _plogr(p: Tensor, log_ratio: Tensor) -> Tensor:
    """p * log_ratio, 0 where p == 0 in value and gradient (the inner where keeps 0 * inf out of backward too)."""
    live = p > 0
    return torch.where(live, p * torch.where(live, log_ratio, 0.0), 0.0)


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


def _spans(lengths: list[int], T: int, chunk: int):
    """(row, slice) blocks covering positions t < length of each row, at most `chunk` positions each."""
    for b, n in enumerate(lengths):
        for s in range(0, min(n, T), chunk):
            yield b, slice(s, min(s + chunk, n, T))


def _block_rows(lengths: list[int], T: int, chunk: int) -> int:
    """Rows of the [rows, V] work blocks: the longest span `_spans` yields (at least 1)."""
    return max(1, min(chunk, max((min(n, T) for n in lengths), default=0)))


def _zero_beyond_lengths_(grad_BTV: Tensor, lengths: list[int]) -> Tensor:
    for b, n in enumerate(lengths):
        grad_BTV[b, max(n, 0) :].zero_()
    return grad_BTV


def _scaled_(out_NV: Tensor, x_NV: Tensor, tau: float) -> Tensor:
    """out <- max(x, floor) / tau in out's (accumulation) dtype; the only copy of the input chunk."""
    if x_NV.dtype == out_NV.dtype:
        torch.clamp(x_NV, min=_floor(x_NV.dtype), out=out_NV)
    else:
        out_NV.copy_(x_NV).clamp_(min=_floor(x_NV.dtype))
    return out_NV.div_(tau) if tau != 1.0 else out_NV


def _log_softmax_(out_NV: Tensor, z_NV: Tensor) -> Tensor:
    """out <- log_softmax(z) over V: one fused kernel (the one naive log_softmax uses), written into out."""
    return torch._log_softmax(z_NV, -1, False, out=out_NV)


def _softmax_(out_NV: Tensor, z_NV: Tensor) -> Tensor:
    """out <- softmax(z) over V: one fused kernel, written into out."""
    return torch._softmax(z_NV, -1, False, out=out_NV)


def _dot_(a_NV: Tensor, b_NV: Tensor) -> Tensor:
    """Row-wise sum(a * b), overwriting a (torch's cascade sum rather than a BLAS dot keeps fp32 error small)."""
    return a_NV.mul_(b_NV).sum(-1)


def _mixture_log_(out_NV: Tensor, ps_NV: Tensor, pt_NV: Tensor, beta: float) -> Tensor:
    """out <- log(beta T + (1 - beta) S), floored at the smallest normal float (M = 0 only where S = T = 0)."""
    return torch.lerp(ps_NV, pt_NV, beta, out=out_NV).clamp_(min=torch.finfo(out_NV.dtype).tiny).log_()


CLIP_MODES = ("token", "element")
# columns of the per-position statistics a divergence returns (`per_token_divergence(..., with_stats=True)`)
STAT_KEYS = ("clipped", "teacher_entropy", "student_entropy")


def _check_clip(clip: float | None, clip_mode: str) -> None:
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"clip_mode {clip_mode!r} is not one of {list(CLIP_MODES)}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None (off), got {clip}")


def block_buffers(kind: str) -> int:
    """[n, V] work buffers `block_divergence` / `block_divergence_grad` use for this kind (callers preallocate)."""
    return 5 if kind == "jsd" else 3


def _elements_(out_NV, ls, lt, ps, pt, lm, kind: str, beta: float):
    """out <- the per-vocabulary-entry terms whose sum is D (F.kl_div(..., reduction="none") in OPSD's code)."""
    if kind == "fkl":  # T (log T - log S)
        return torch.sub(lt, ls, out=out_NV).mul_(pt)
    if kind == "rkl":  # S (log S - log T)
        return torch.sub(ls, lt, out=out_NV).mul_(ps)
    # beta T (log T - log M) + (1 - beta) S (log S - log M)
    torch.sub(ls, lm, out=out_NV).mul_(ps).mul_(1 - beta)
    return out_NV.add_(torch.sub(lt, lm).mul_(pt), alpha=beta)


def block_divergence(
    s_NV: Tensor,
    t_NV: Tensor,
    *,
    kind: str,
    beta: float = 0.5,
    tau: float = 1.0,
    clip: float | None = None,
    clip_mode: str = "token",
    with_stats: bool = False,
    work: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """D_t for one [n, V] block of positions: the per-block math of every full-vocabulary divergence.

    A caller that holds hidden states (logits = h W^T computed block by block) calls this in forward and
    `block_divergence_grad` in backward with the same block; `per_token_divergence(support="full")` does the same on
    a [B, T, V] logits tensor.

    Args:
        s_NV, t_NV: student / teacher logits of n positions (any float dtype; not modified).
        kind, beta: "fkl" | "rkl" | "jsd" (already resolved: `resolve_divergence`).
        tau: divides both logits.
        clip, clip_mode: None = no clip; "token": D_t <- min(D_t, clip); "element": each per-vocabulary-entry term
            clamped to <= clip before the vocabulary sum (OPSD-v3's `--jsd_token_clip`).
        with_stats: also return per-position statistics (no grad).
        work: a [block_buffers(kind), >= n, V] buffer in the accumulation dtype (allocated when None).
    Returns: (D_n, saved_n2, stats_n3): D in the accumulation dtype, what `block_divergence_grad` needs, and with
        with_stats the columns of STAT_KEYS: clipped (vocabulary entries clamped, element mode; 1.0 if D_t was
        clipped, token mode), H(T), H(S), else None.
    """
    acc = _acc(s_NV.dtype)
    n, V = s_NV.shape
    work = s_NV.new_empty(block_buffers(kind), n, V, dtype=acc) if work is None else work
    z, ls, lt, *jsd_bufs = work[:, :n].unbind(0)
    _log_softmax_(ls, _scaled_(z, s_NV, tau))
    _log_softmax_(lt, _scaled_(z, t_NV, tau))
    stats = None
    if with_stats:
        stats = torch.stack([torch.zeros(n, dtype=acc, device=s_NV.device), _neg_plogp(lt, z), _neg_plogp(ls, z)], 1)
    aux = torch.zeros(n, dtype=acc, device=s_NV.device)
    if clip is not None and clip_mode == "element":
        pt, lm = (jsd_bufs[0], jsd_bufs[1]) if kind == "jsd" else (None, None)
        ps = torch.exp(ls) if kind != "fkl" else None
        pt = torch.exp(lt, out=pt) if pt is not None else torch.exp(lt)
        if kind == "jsd":
            _mixture_log_(lm, ps, pt, beta)
        e = _elements_(z, ls, lt, ps, pt, lm, kind, beta)
        if stats is not None:
            stats[:, 0] = (e > clip).sum(-1).to(acc)
        D = e.clamp_(max=clip).sum(-1)
        return D, torch.stack([aux, D], 1), stats
    if kind == "fkl":  # sum T (log T - log S)
        D = _dot_(torch.exp(lt, out=z), lt.sub_(ls))
    elif kind == "rkl":  # sum S (log S - log T)
        D = aux = _dot_(torch.exp(ls, out=z), ls.sub_(lt))
    else:  # beta KL(T || M) + (1 - beta) KL(S || M), M = beta T + (1 - beta) S
        pt, lm = jsd_bufs
        ps = torch.exp(ls, out=z)
        _mixture_log_(lm, ps, torch.exp(lt, out=pt), beta)
        aux = _dot_(ls.sub_(lm), ps)
        D = beta * _dot_(lt.sub_(lm), pt) + (1 - beta) * aux
    saved = torch.stack([aux, D], 1)  # D before a token clip: the clip's gradient mask
    if clip is not None:  # token mode
        if stats is not None:
            stats[:, 0] = (D > clip).to(acc)
        D = D.clamp(max=clip)
    return D, saved, stats


def _neg_plogp(logp_NV: Tensor, tmp_NV: Tensor) -> Tensor:
    """-sum p log p per row, using tmp as scratch (overwritten)."""
    return -torch.exp(logp_NV, out=tmp_NV).mul_(logp_NV).sum(-1)


def block_divergence_grad(
    s_NV: Tensor,
    t_NV: Tensor,
    saved_N2: Tensor,
    g_N: Tensor,
    *,
    kind: str,
    beta: float = 0.5,
    tau: float = 1.0,
    clip: float | None = None,
    clip_mode: str = "token",
    work: Tensor | None = None,
) -> Tensor:
    """dL/d(student logits) for one block, given g = dL/dD_t: [n, V] in the accumulation dtype.

    With u_v = 1 where an entry survives the clip (all entries without an element clip), a_v = u_v dD/dlog S(v)
    and grad_z = a - S sum_v a_v, then / tau. Unclipped: fkl S - T; rkl S (log S - log T - D);
    jsd (1 - beta) S (log S - log M - KL(S || M)). Element clip: a_v = -T u (fkl), S (log S - log T + 1) u (rkl),
    (1 - beta) S (log S - log M) u (jsd); a clipped entry then gets only the centring term -S sum a, which reverses
    its direction (Huang et al., spec section 2's box). Token clip: g <- 0 where D_t > clip.

    Args:
        s_NV, t_NV, kind, beta, tau, clip, clip_mode, work: as given to `block_divergence`.
        saved_N2: its second return value.
        g_N: the upstream gradient of each position's D.
    """
    acc = _acc(s_NV.dtype)
    n, V = s_NV.shape
    work = s_NV.new_empty(block_buffers(kind), n, V, dtype=acc) if work is None else work
    z, a, c, *more = work[:, :n].unbind(0)
    aux_N, d_N = saved_N2[:, 0], saved_N2[:, 1]
    g_N1 = g_N.to(acc)[:, None] / tau
    if clip is not None and clip_mode == "token":
        g_N1 = g_N1 * (d_N <= clip).to(acc)[:, None]
    if clip is not None and clip_mode == "element":
        ls = _log_softmax_(a, _scaled_(z, s_NV, tau))
        lt = _log_softmax_(c, _scaled_(z, t_NV, tau))
        ps, pt = ls.exp(), lt.exp()
        lm = _mixture_log_(more[0], ps, pt, beta) if kind == "jsd" else None
        live = _elements_(z, ls, lt, ps, pt, lm, kind, beta).le_(clip)  # u_v (clamp's gradient: x <= max)
        if kind == "fkl":
            h = pt.neg_()
        elif kind == "rkl":
            h = ls.sub_(lt).add_(1.0).mul_(ps)
        else:
            h = ls.sub_(lm).mul_(ps).mul_(1 - beta)
        h.mul_(live)
        return h.sub_(ps.mul_(h.sum(-1, keepdim=True))).mul_(g_N1)
    if kind == "fkl":  # S - T
        ps = _softmax_(a, _scaled_(z, s_NV, tau))
        gz = ps.sub_(_softmax_(c, _scaled_(z, t_NV, tau)))
    else:
        ls = _log_softmax_(a, _scaled_(z, s_NV, tau))
        lt = _log_softmax_(c, _scaled_(z, t_NV, tau))
        ps = torch.exp(ls, out=z)
        if kind == "rkl":  # S (log S - log T - D)
            gz = ls.sub_(lt).sub_(aux_N[:, None]).mul_(ps)
        else:  # (1 - beta) S (log S - log M - KL(S || M))
            lm = _mixture_log_(lt, ps, lt.exp_(), beta)
            gz = ls.sub_(lm).sub_(aux_N[:, None]).mul_(ps).mul_(1 - beta)
    return gz.mul_(g_N1)


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


def per_token_divergence(
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
) -> Tensor:
    """D_t between softmax(teacher / tau) and softmax(student / tau) at every position (fp32; fp64 for fp64).

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
    Returns: D_BT.
    """
    return divergence_with_stats(
        student_logits_BTV,
        teacher_logits_BTV,
        kind=kind,
        beta=beta,
        temperature=temperature,
        support=support,
        topk=topk,
        lengths_B=lengths_B,
        chunk_tokens=chunk_tokens,
        clip=clip,
        clip_mode=clip_mode,
        with_stats=False,
    )[0]


def divergence_with_stats(
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """`per_token_divergence` plus per-position statistics (no grad, 0 beyond each row's length).

    Returns: (D_BT, stats) with stats[k] of shape [B, T] for k in STAT_KEYS: "clipped" (element mode: vocabulary
    entries clamped at that position; token mode: 1.0 where D_t was clipped), "teacher_entropy" H(T) and
    "student_entropy" H(S), on the divergence's support (top-k supports: over their k or k + 1 entries).
    Empty dict when with_stats is False. The logits may be `HiddenLogits` (computed block by block).
    """
    D_BT, st_BT3 = divergence_parts(
        student_logits_BTV,
        teacher_logits_BTV,
        kind=kind,
        beta=beta,
        temperature=temperature,
        support=support,
        topk=topk,
        lengths_B=lengths_B,
        chunk_tokens=chunk_tokens,
        clip=clip,
        clip_mode=clip_mode,
        with_stats=with_stats,
    )
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
    """(D_BT, stats_BT3): `divergence_with_stats` with the statistics stacked in STAT_KEYS order (zeros without
    with_stats), tensors only, so that it also runs block by block on HiddenLogits (`sposd.ops.fused`)."""
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
        acc = _acc(teacher_logits_BTV.dtype)
        mixed = torch.lerp(teacher_logits_BTV[r, c].to(acc), student_logits_BTV[r, c].detach().to(acc), gamma)
        teacher_logits_BTV[r, c] = mixed.to(teacher_logits_BTV.dtype)


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
