"""The block math of the full-vocabulary divergences: one [rows, V] block of positions at a time, forward and
analytic backward, in place into preallocated fp32 buffers (`sposd.ops.divergence` builds the autograd functions and
the hidden-state block rules on them).

Legend: N positions of a block, V vocabulary, B rows, T completion positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def lerp_logits(teacher_NV: Tensor, partner_NV: Tensor, gamma: float) -> Tensor:
    """(1 - gamma) z_T + gamma sg(z_P), computed in at least fp32, returned in the teacher's dtype (PAINT's
    energy-space interpolation of one block of rows)."""
    acc = _acc(teacher_NV.dtype)
    return torch.lerp(teacher_NV.to(acc), partner_NV.detach().to(acc), gamma).to(teacher_NV.dtype)


def _floor(dtype: torch.dtype) -> float:
    """Finite stand-in for -inf logits (masked tokens), so 0 * log-ratio stays 0 instead of NaN."""
    return max(-1e30, torch.finfo(dtype).min)


def _plogr(p: Tensor, log_ratio: Tensor) -> Tensor:
    """p * log_ratio, 0 where p == 0 in value and gradient (the inner where keeps 0 * inf out of backward too)."""
    live = p > 0
    return torch.where(live, p * torch.where(live, log_ratio, 0.0), 0.0)


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
