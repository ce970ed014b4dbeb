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


def divergence_from_logprobs(s_logp_NK: Tensor, t_logp_NK: Tensor, *, kind: str, beta: float = 0.5) -> Tensor:
    """Divergence over the last dim from log-probs on a common support (plain autograd; teacher detached).

    Args:
        s_logp_NK: student log-probs.
        t_logp_NK: teacher log-probs (detached here).
        kind, beta: "fkl" | "rkl" | "jsd" with its beta.
    Returns: D_N.
    """
    kind, beta = resolve_divergence(kind, beta)
    ls, lt = s_logp_NK, t_logp_NK.detach()
    if kind == "fkl":
        return _plogr(lt.exp(), lt - ls).sum(-1)
    if kind == "rkl":
        return _plogr(ls.exp(), ls - lt).sum(-1)
    # floored so an entry where both are -inf gets a finite log M (logaddexp's backward is NaN at (-inf, -inf))
    floor = _floor(ls.dtype)
    lm = torch.logaddexp(lt.clamp(min=floor) + math.log(beta), ls.clamp(min=floor) + math.log1p(-beta))
    return beta * _plogr(lt.exp(), lt - lm).sum(-1) + (1 - beta) * _plogr(ls.exp(), ls - lm).sum(-1)


def naive_divergence(
    student_logits_BTV: Tensor, teacher_logits_BTV: Tensor, *, kind: str, beta: float = 0.5, temperature: float = 1.0
) -> Tensor:
    """Reference: full fp32 log-softmax of both models, then the formula with autograd (OPSD's way). D_BT."""
    acc = _acc(student_logits_BTV.dtype)
    ls = torch.log_softmax(student_logits_BTV.to(acc) / temperature, dim=-1)
    lt = torch.log_softmax(teacher_logits_BTV.detach().to(acc) / temperature, dim=-1)
    return divergence_from_logprobs(ls, lt, kind=kind, beta=beta)


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


class _FullVocabDivergence(torch.autograd.Function):
    """Chunked full-vocabulary divergence that saves its inputs (references) and one [B, T] statistic.

    Forward and backward each work in a few preallocated [chunk, V] blocks of the accumulation dtype (3, or 5 for
    jsd's forward) with fused (log-)softmax kernels and in-place / out= ops, and backward recomputes both
    distributions and writes chunk by chunk into the one [B, T, V] gradient it returns. The statistic saved for the
    gradient's centring term is D itself (rkl) or KL(S || M) (jsd).
    """

    @staticmethod
    def forward(ctx, s_BTV, t_BTV, lengths, kind, beta, tau, chunk):
        acc = _acc(s_BTV.dtype)
        B, T, V = s_BTV.shape
        D_BT, aux_BT = s_BTV.new_zeros(B, T, dtype=acc), s_BTV.new_zeros(B, T, dtype=acc)
        buf = s_BTV.new_empty(5 if kind == "jsd" else 3, _block_rows(lengths, T, chunk), V, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            D_BT[b, sl], aux_BT[b, sl] = _divergence_block(buf, s_BTV[b, sl], t_BTV[b, sl], kind, beta, tau)
        ctx.save_for_backward(s_BTV, t_BTV, aux_BT)
        ctx.args = (lengths, kind, beta, tau, chunk)
        return D_BT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_BT):
        s_BTV, t_BTV, aux_BT = ctx.saved_tensors
        lengths, kind, beta, tau, chunk = ctx.args
        acc = aux_BT.dtype
        B, T, V = s_BTV.shape
        grad = _zero_beyond_lengths_(torch.empty(s_BTV.shape, dtype=s_BTV.dtype, device=s_BTV.device), lengths)
        buf = s_BTV.new_empty(3, _block_rows(lengths, T, chunk), V, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            gz = _divergence_block_grad(buf, s_BTV[b, sl], t_BTV[b, sl], aux_BT[b, sl], g_BT[b, sl], kind, beta, tau)
            grad[b, sl] = gz
        return grad, None, None, None, None, None, None


def _divergence_block(buf: Tensor, s_NV: Tensor, t_NV: Tensor, kind: str, beta: float, tau: float):
    """(D_N, aux_N) at N positions from their logits; buf holds >= 3 (jsd: 5) [N, V] blocks of the acc dtype.
    aux is what the gradient needs besides the logits: D (rkl), KL(S || M) (jsd), unused for fkl."""
    z, ls, lt, *jsd_bufs = buf[:, : s_NV.shape[0]].unbind(0)
    _log_softmax_(ls, _scaled_(z, s_NV, tau))
    _log_softmax_(lt, _scaled_(z, t_NV, tau))
    if kind == "fkl":  # sum T (log T - log S)
        D = _dot_(torch.exp(lt, out=z), lt.sub_(ls))
        return D, torch.zeros_like(D)
    if kind == "rkl":  # sum S (log S - log T)
        D = _dot_(torch.exp(ls, out=z), ls.sub_(lt))
        return D, D
    # beta KL(T || M) + (1 - beta) KL(S || M), M = beta T + (1 - beta) S
    pt, lm = jsd_bufs
    ps = torch.exp(ls, out=z)
    _mixture_log_(lm, ps, torch.exp(lt, out=pt), beta)
    kl_sm = _dot_(ls.sub_(lm), ps)
    return beta * _dot_(lt.sub_(lm), pt) + (1 - beta) * kl_sm, kl_sm


def _divergence_block_grad(buf, s_NV, t_NV, aux_N, g_N, kind, beta, tau) -> Tensor:
    """g_N dD/dlogits_S at N positions ([N, V] in buf, acc dtype); buf holds >= 3 [N, V] blocks."""
    z, a, c = buf[:3, : s_NV.shape[0]].unbind(0)
    g_N1 = g_N[:, None].to(buf.dtype) * ((1.0 - beta if kind == "jsd" else 1.0) / tau)  # dD/dlogits = dD/dz / tau
    if kind == "fkl":  # S - T
        ps = _softmax_(a, _scaled_(z, s_NV, tau))
        gz = ps.sub_(_softmax_(c, _scaled_(z, t_NV, tau)))
    else:
        ls = _log_softmax_(a, _scaled_(z, s_NV, tau))
        lt = _log_softmax_(c, _scaled_(z, t_NV, tau))
        ps = torch.exp(ls, out=z)
        if kind == "rkl":  # S (log S - log T - D)
            gz = ls.sub_(lt).sub_(aux_N[:, None]).mul_(ps)
        else:  # (1 - beta) S (log S - log M - KL(S || M)); (1 - beta) is in g_N1
            lm = _mixture_log_(lt, ps, lt.exp_(), beta)
            gz = ls.sub_(lm).sub_(aux_N[:, None]).mul_(ps)
    return gz.mul_(g_N1)


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
    """per_token_divergence(support="full") on HiddenLogits: the block math of `_FullVocabDivergence`, saving its
    per-position statistic; backward from the recomputed student and teacher blocks."""

    def __init__(self, kind: str, beta: float, tau: float) -> None:
        self.kind, self.beta, self.tau = kind, beta, tau

    def _buf(self, s_nV: Tensor, k: int) -> Tensor:
        return s_nV.new_empty(k, s_nV.shape[0], s_nV.shape[1], dtype=_acc(s_nV.dtype))

    def forward(self, z, per_pos):
        s, t = z["student_logits_BTV"], z["teacher_logits_BTV"]
        D_n, aux_n = _divergence_block(
            self._buf(s, 5 if self.kind == "jsd" else 3), s, t, self.kind, self.beta, self.tau
        )
        return [D_n], aux_n[:, None]

    def backward(self, z, per_pos, saved_nK, grads):
        if grads[0] is None:
            return {}
        s, t = z["student_logits_BTV"], z["teacher_logits_BTV"]
        gz = _divergence_block_grad(self._buf(s, 3), s, t, saved_nK[:, 0], grads[0], self.kind, self.beta, self.tau)
        return {"student_logits_BTV": gz}


def _full_vocab_rule(a: dict) -> BlockRule | None:
    return (
        _FullVocabRule(*resolve_divergence(a["kind"], a["beta"]), a["temperature"]) if a["support"] == "full" else None
    )


@per_position(logits=("student_logits_BTV", "teacher_logits_BTV"), lengths="lengths_B", rule=_full_vocab_rule)
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
    Returns: D_BT.
    """
    kind, beta = resolve_divergence(kind, beta)
    if support not in SUPPORTS:
        raise ValueError(f"support {support!r} is not one of {list(SUPPORTS)}")
    if support != "full" and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    B, T, _ = student_logits_BTV.shape
    teacher = teacher_logits_BTV.detach()
    lengths = [T] * B if lengths_B is None else [min(max(int(n), 0), T) for n in lengths_B.tolist()]
    chunk = max(1, chunk_tokens)
    if support == "full":
        return _FullVocabDivergence.apply(student_logits_BTV, teacher, lengths, kind, beta, temperature, chunk)
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
    return torch.where(valid_BT1[..., 0], divergence_from_logprobs(ls_BTK, lt_BTK, kind=kind, beta=beta), 0.0)


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
