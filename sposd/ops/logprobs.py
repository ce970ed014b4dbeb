"""Per-token log-probabilities and entropies from logits, without a full-vocabulary fp32 copy.

Legend: B rows, T completion tokens, V vocabulary, N tokens in one chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sposd.ops.fused import per_position


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 logits, fp64 for fp64 (so gradcheck runs in double)."""
    return torch.promote_types(dtype, torch.float32)


def _t_chunks(B: int, T: int, chunk_tokens: int) -> list[slice]:
    """Slices over T such that each [B, slice, V] chunk holds about chunk_tokens tokens."""
    step = max(1, chunk_tokens // max(B, 1))
    return [slice(s, s + step) for s in range(0, T, step)]


class _TokenLogprob(torch.autograd.Function):
    """log softmax(z / tau)[y] with z kept in its own dtype; fp32 work happens one T-chunk at a time.

    Saves only the input logits and the [B, T] log-normaliser; backward recomputes the softmax chunk-wise:
    grad z = g * (onehot(y) - softmax(z / tau)) / tau.
    """

    @staticmethod
    def forward(ctx, logits_BTV: Tensor, tokens_BT: Tensor, temperature: float, chunk_tokens: int) -> Tensor:
        acc = _acc_dtype(logits_BTV.dtype)
        B, T, _ = logits_BTV.shape
        lse_BT = torch.empty(B, T, dtype=acc, device=logits_BTV.device)
        for sl in _t_chunks(B, T, chunk_tokens):
            lse_BT[:, sl] = torch.logsumexp(logits_BTV[:, sl].to(acc) / temperature, dim=-1)
        picked_BT = logits_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1).to(acc) / temperature
        ctx.save_for_backward(logits_BTV, tokens_BT, lse_BT)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        return picked_BT - lse_BT

    @staticmethod
    def backward(ctx, grad_BT: Tensor):
        logits_BTV, tokens_BT, lse_BT = ctx.saved_tensors
        tau = ctx.temperature
        B, T, _ = logits_BTV.shape
        grad_BTV = torch.empty_like(logits_BTV)
        for sl in _t_chunks(B, T, ctx.chunk_tokens):
            g_BN = grad_BT[:, sl].to(lse_BT.dtype)
            p_BNV = torch.exp(logits_BTV[:, sl].to(lse_BT.dtype) / tau - lse_BT[:, sl, None])
            d_BNV = -p_BNV * g_BN[..., None]
            d_BNV.scatter_add_(-1, tokens_BT[:, sl, None], g_BN[..., None])
            grad_BTV[:, sl] = (d_BNV / tau).to(logits_BTV.dtype)
        return grad_BTV, None, None, None


@per_position(logits=("logits_BTV",), per_pos=("tokens_BT",))
def token_logprobs(
    logits_BTV: Tensor, tokens_BT: Tensor, *, temperature: float = 1.0, chunk_tokens: int = 1024
) -> Tensor:
    """Log-probability of each given token under softmax(logits / temperature), in fp32 (fp64 for fp64 input).

    Computed as gather - logsumexp chunk by chunk, so peak extra memory is one [chunk_tokens, V] fp32 block
    rather than a full-vocabulary fp32 copy of the logits (1.2 GB per 2k-token Qwen3 sequence).

    Args:
        logits_BTV: logits at the positions that predict tokens_BT (any float dtype; may be a strided view).
        tokens_BT: token ids (long).
        temperature: divides the logits before the softmax (the rollout temperature, as vLLM samples with it).
        chunk_tokens: tokens per fp32 block.
    Returns: logp_BT.
    """
    return _TokenLogprob.apply(logits_BTV, tokens_BT, temperature, chunk_tokens)


@per_position(logits=("logits_BTV",))
def entropy_from_logits(logits_BTV: Tensor, *, temperature: float = 1.0, chunk_tokens: int = 1024) -> Tensor:
    """Entropy H = logsumexp(z) - sum_v softmax(z)_v z_v of softmax(logits / temperature) at each position.

    Chunked like `token_logprobs`; meant for metrics (call under `no_grad`: with grad every chunk is saved).

    Args:
        logits_BTV: logits (any float dtype).
        temperature: divides the logits before the softmax.
        chunk_tokens: tokens per fp32 block.
    Returns: entropy_BT in fp32 (fp64 for fp64 input).
    """
    acc = _acc_dtype(logits_BTV.dtype)
    B, T, _ = logits_BTV.shape
    chunks = []
    for sl in _t_chunks(B, T, chunk_tokens):
        z_BNV = logits_BTV[:, sl].to(acc) / temperature
        lse_BN = torch.logsumexp(z_BNV, dim=-1)
        chunks.append(lse_BN - (torch.softmax(z_BNV, dim=-1) * z_BNV).sum(-1))
    return torch.cat(chunks, dim=1) if chunks else logits_BTV.new_zeros(B, 0, dtype=acc)


@torch.no_grad()
def linear_token_logprobs(
    hidden_NH: Tensor,
    weight_VH: Tensor,
    tokens_N: Tensor,
    *,
    bias_V: Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
) -> Tensor:
    """log softmax(h W^T + b)[y] / tau at N positions from final hidden states and the output layer, never holding
    more than one [chunk_tokens, V] block of logits (no grad: teacher scoring, metrics).

    Args:
        hidden_NH: final hidden states at the positions predicting tokens_N.
        weight_VH, bias_V: the output layer (lm_head) parameters.
        tokens_N: token ids.
        temperature: divides the logits.
        chunk_tokens: positions per block.
    Returns: logp_N in fp32 (fp64 for fp64 input).
    """
    acc = _acc_dtype(hidden_NH.dtype)
    out = torch.empty(hidden_NH.shape[0], dtype=acc, device=hidden_NH.device)
    for s in range(0, hidden_NH.shape[0], chunk_tokens):
        z = torch.nn.functional.linear(hidden_NH[s : s + chunk_tokens], weight_VH, bias_V).to(acc) / temperature
        out[s : s + chunk_tokens] = z.gather(-1, tokens_N[s : s + chunk_tokens, None])[:, 0] - z.logsumexp(-1)
    return out
