"""Per-token divergences between a teacher and a student on the same tokens (spec/ALGORITHMS.md 0.3-0.4).

S = softmax(z_S / tau), T = softmax(z_T / tau) at each completion position; the teacher is always stop-gradient.

    fkl     KL(T || S) = sum_v T (log T - log S)
    rkl     KL(S || T) = sum_v S (log S - log T)
    jsd(b)  M = b T + (1 - b) S;  b KL(T || M) + (1 - b) KL(S || M);  b = 0 -> fkl, b = 1 -> rkl
            (the OPSD / SDPO code convention, not the mathematical limit, which is 0)

Full-vocabulary divergences never hold two [B, T, V] temporaries: `per_token_divergence(support="full")` is a
custom autograd function that works one [chunk, V] fp32 block at a time and recomputes in backward with the
analytic gradients w.r.t. z = logits / tau (then / tau):

    fkl:  dD/dz_S = S - T
    rkl:  dD/dz_S = S (log S - log T - D)
    jsd:  dD/dz_S = (1 - b) S (log S - log M - KL(S || M))

Legend: B rows, T completion positions, V vocabulary, K support size of a top-k divergence, N positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DIVERGENCES = ("fkl", "rkl", "jsd")
SUPPORTS = ("full", "teacher_topk", "student_topk_tail")
MISMATCH_SIGNS = ("abs", "teacher_sharper", "student_sharper")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


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
    """p * log_ratio with 0 where p == 0 (so a -inf log-prob of an impossible token gives 0, not NaN)."""
    return torch.where(p > 0, p * log_ratio, torch.zeros((), dtype=p.dtype, device=p.device))


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
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
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


_LOG_FLOOR = -1e30  # -inf log-probs (masked logits) are floored so 0 * log-ratio stays 0, never NaN


def _dot_(a_NV: Tensor, b_NV: Tensor) -> Tensor:
    """Row-wise sum(a * b), overwriting a (no extra block; torch's pairwise sum keeps fp32 error small)."""
    return a_NV.mul_(b_NV).sum(-1)


def _log_softmax_block(x_NV: Tensor, tau: float, acc: torch.dtype, lse_N: Tensor | None = None):
    """(log softmax(x / tau) as a fresh fp32 block, its logsumexp); with lse_N given, reuse it."""
    z = x_NV.to(acc).div_(tau) if x_NV.dtype != acc else x_NV / tau
    if lse_N is None:
        lse_N = torch.logsumexp(z, -1)
    return z.sub_(lse_N[:, None]).clamp_(min=_LOG_FLOOR), lse_N


def _mixture_log_(pt: Tensor, ps: Tensor, beta: float) -> Tensor:
    """log(beta T + (1 - beta) S), computed in place in pt's block (floored at the smallest normal float)."""
    return pt.mul_(beta).add_(ps, alpha=1 - beta).clamp_(min=torch.finfo(pt.dtype).tiny).log_()


class _FullVocabDivergence(torch.autograd.Function):
    """Chunked full-vocabulary divergence; saves inputs (references) + [B, T] statistics, recomputes in backward.

    Every [N, V] block is fp32 and updated in place where possible (about four live blocks at the peak), so
    the extra memory is a few chunk x V x 4 bytes besides the returned gradient.
    """

    @staticmethod
    def forward(ctx, s_BTV, t_BTV, lengths, kind, beta, tau, chunk):  # noqa: PLR0913
        acc = _acc(s_BTV.dtype)
        B, T, _ = s_BTV.shape
        D_BT = s_BTV.new_zeros(B, T, dtype=acc)
        lse_s = s_BTV.new_zeros(B, T, dtype=acc)
        lse_t = s_BTV.new_zeros(B, T, dtype=acc)
        for b, sl in _spans(lengths, T, chunk):
            ls, lse_s[b, sl] = _log_softmax_block(s_BTV[b, sl], tau, acc)
            lt, lse_t[b, sl] = _log_softmax_block(t_BTV[b, sl], tau, acc)
            if kind == "fkl":  # sum T (log T - log S)
                D_BT[b, sl] = _dot_(lt.exp(), lt.sub_(ls))
            elif kind == "rkl":  # sum S (log S - log T)
                D_BT[b, sl] = _dot_(ls.exp(), ls.sub_(lt))
            else:
                ps = ls.exp()
                lm = _mixture_log_(lt.exp(), ps, beta)
                kl_sm = _dot_(ps, ls.sub_(lm))  # ps is spent here
                D_BT[b, sl] = beta * _dot_(lt.exp(), lt.sub_(lm)) + (1 - beta) * kl_sm
        ctx.save_for_backward(s_BTV, t_BTV, lse_s, lse_t, D_BT)
        ctx.args = (lengths, kind, beta, tau, chunk)
        return D_BT

    @staticmethod
    def backward(ctx, g_BT):
        s_BTV, t_BTV, lse_s, lse_t, D_BT = ctx.saved_tensors
        lengths, kind, beta, tau, chunk = ctx.args
        acc = lse_s.dtype
        T = s_BTV.shape[1]
        grad = torch.zeros(s_BTV.shape, dtype=s_BTV.dtype, device=s_BTV.device)
        for b, sl in _spans(lengths, T, chunk):
            ls, _ = _log_softmax_block(s_BTV[b, sl], tau, acc, lse_s[b, sl])
            lt, _ = _log_softmax_block(t_BTV[b, sl], tau, acc, lse_t[b, sl])
            if kind == "fkl":  # S - T
                gz = ls.exp_().sub_(lt.exp_())
            elif kind == "rkl":  # S (log S - log T - D)
                ps = ls.exp()
                gz = ls.sub_(lt).sub_(D_BT[b, sl, None]).mul_(ps)
            else:  # (1 - beta) S (log S - log M - KL(S || M))
                ps = ls.exp()
                lm = _mixture_log_(lt.exp_(), ps, beta)
                d = ls.sub_(lm)
                gz = d.sub_((ps * d).sum(-1, keepdim=True)).mul_(ps).mul_(1 - beta)
            grad[b, sl] = gz.mul_(g_BT[b, sl, None].to(acc) / tau)
        return grad, None, None, None, None, None, None


class _LogSumExp(torch.autograd.Function):
    """logsumexp(z / tau) over V, chunked both ways (d/dz = softmax(z / tau) / tau)."""

    @staticmethod
    def forward(ctx, z_BTV, tau, chunk):
        acc = _acc(z_BTV.dtype)
        B, T, _ = z_BTV.shape
        out = z_BTV.new_zeros(B, T, dtype=acc)
        for b, sl in _spans([T] * B, T, chunk):
            out[b, sl] = torch.logsumexp(z_BTV[b, sl].to(acc) / tau, -1)
        ctx.save_for_backward(z_BTV, out)
        ctx.args = (tau, chunk)
        return out

    @staticmethod
    def backward(ctx, g_BT):
        z_BTV, lse = ctx.saved_tensors
        tau, chunk = ctx.args
        B, T, _ = z_BTV.shape
        grad = torch.zeros(z_BTV.shape, dtype=z_BTV.dtype, device=z_BTV.device)
        for b, sl in _spans([T] * B, T, chunk):
            p = (z_BTV[b, sl].to(lse.dtype) / tau).sub_(lse[b, sl, None]).exp_()
            grad[b, sl] = p.mul_(g_BT[b, sl, None] / tau)
        return grad, None, None


def _topk_indices(logits_BTV: Tensor, k: int, chunk: int) -> Tensor:
    B, T, V = logits_BTV.shape
    k = min(k, V)
    idx = torch.empty(B, T, k, dtype=torch.long, device=logits_BTV.device)
    with torch.no_grad():
        for b, sl in _spans([T] * B, T, chunk):
            idx[b, sl] = logits_BTV[b, sl].topk(k, dim=-1).indices
    return idx


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable; x is clamped below 0 (SDPO clamps at -1e-7)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


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
    B, T, _ = student_logits_BTV.shape
    teacher = teacher_logits_BTV.detach()
    lengths = [T] * B if lengths_B is None else [int(n) for n in lengths_B.tolist()]
    if support == "full":
        return _FullVocabDivergence.apply(
            student_logits_BTV, teacher, lengths, kind, beta, temperature, max(1, chunk_tokens)
        )
    acc = _acc(student_logits_BTV.dtype)
    mask_BT = (
        torch.arange(T, device=student_logits_BTV.device)[None, :]
        < torch.tensor(lengths, device=student_logits_BTV.device)[:, None]
    )
    if support == "teacher_topk":
        idx = _topk_indices(teacher, topk, chunk_tokens)
        ls = torch.log_softmax(student_logits_BTV.gather(-1, idx).to(acc) / temperature, -1)
        lt = torch.log_softmax(teacher.gather(-1, idx).to(acc) / temperature, -1)
    else:
        idx = _topk_indices(student_logits_BTV.detach(), topk, chunk_tokens)
        ls = (
            student_logits_BTV.gather(-1, idx).to(acc) / temperature
            - _LogSumExp.apply(student_logits_BTV, temperature, chunk_tokens)[..., None]
        )
        with torch.no_grad():
            lt = (
                teacher.gather(-1, idx).to(acc) / temperature
                - _LogSumExp.apply(teacher, temperature, chunk_tokens)[..., None]
            )
        ls = torch.cat([ls, _log1mexp(torch.logsumexp(ls, -1, keepdim=True))], -1)
        lt = torch.cat([lt, _log1mexp(torch.logsumexp(lt, -1, keepdim=True))], -1)
    return divergence_from_logprobs(ls, lt, kind=kind, beta=beta) * mask_BT


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
    rows, cols = mask_BT.nonzero(as_tuple=True)
    for s in range(0, rows.numel(), chunk_tokens):
        r, c = rows[s : s + chunk_tokens], cols[s : s + chunk_tokens]
        mixed = torch.lerp(teacher_logits_BTV[r, c].float(), student_logits_BTV[r, c].detach().float(), gamma)
        teacher_logits_BTV[r, c] = mixed.to(teacher_logits_BTV.dtype)
