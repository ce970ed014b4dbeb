"""Per-token log-probabilities and entropies from logits, without a full-vocabulary fp32 copy.

Legend: B rows, T completion tokens, V vocabulary, N tokens in one chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sposd.ops.fused import BlockRule, per_position


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
        logp_BT = torch.empty(B, T, dtype=acc, device=logits_BTV.device)
        lse_BT = torch.empty(B, T, dtype=acc, device=logits_BTV.device)
        for sl in _t_chunks(B, T, chunk_tokens):
            logp_BT[:, sl], lse_BT[:, sl] = logprob_block(logits_BTV[:, sl], tokens_BT[:, sl], temperature)
        ctx.save_for_backward(logits_BTV, tokens_BT, lse_BT)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        return logp_BT

    @staticmethod
    def backward(ctx, grad_BT: Tensor):
        logits_BTV, tokens_BT, lse_BT = ctx.saved_tensors
        B, T, _ = logits_BTV.shape
        grad_BTV = torch.empty_like(logits_BTV)
        for sl in _t_chunks(B, T, ctx.chunk_tokens):
            d_BNV = logprob_block_grad(
                logits_BTV[:, sl], tokens_BT[:, sl], lse_BT[:, sl], grad_BT[:, sl], ctx.temperature
            )
            grad_BTV[:, sl] = d_BNV.to(logits_BTV.dtype)
        return grad_BTV, None, None, None


def logprob_block(z_XV: Tensor, tokens_X: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(log softmax(z / tau)[y], logsumexp(z / tau)) over one block of positions, in the acc dtype."""
    acc = _acc_dtype(z_XV.dtype)
    lse_X = torch.logsumexp(z_XV.to(acc) / tau, dim=-1)
    return z_XV.gather(-1, tokens_X.unsqueeze(-1)).squeeze(-1).to(acc) / tau - lse_X, lse_X


def logprob_block_grad(z_XV: Tensor, tokens_X: Tensor, lse_X: Tensor, g_X: Tensor, tau: float) -> Tensor:
    """g dlogp/dz = g (onehot(y) - softmax(z / tau)) / tau over one block (acc dtype), from the saved logsumexp."""
    g_X = g_X.to(lse_X.dtype)
    d_XV = torch.exp(z_XV.to(lse_X.dtype) / tau - lse_X[..., None]).mul_(-g_X[..., None])
    d_XV.scatter_add_(-1, tokens_X[..., None], g_X[..., None])
    return d_XV.div_(tau)


class _LogprobRule(BlockRule):
    """token_logprobs on HiddenLogits: saves logsumexp per position, backward from the recomputed block."""

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def forward(self, z, per_pos):
        logp_n, lse_n = logprob_block(z["logits_BTV"], per_pos["tokens_BT"], self.tau)
        return [logp_n], lse_n[:, None]

    def backward(self, z, per_pos, saved_nK, grads):
        if grads[0] is None:
            return {}
        return {
            "logits_BTV": logprob_block_grad(z["logits_BTV"], per_pos["tokens_BT"], saved_nK[:, 0], grads[0], self.tau)
        }


@per_position(logits=("logits_BTV",), per_pos=("tokens_BT",), rule=lambda a: _LogprobRule(a["temperature"]))
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


@per_position(logits=("logits_BTV",), per_pos=("tokens_BT",))
@torch.no_grad()
def sampled_token_logprobs(
    logits_BTV: Tensor,
    tokens_BT: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = -1,
    top_p: float = 1.0,
    chunk_tokens: int = 1024,
) -> Tensor:
    """Log-probability of each token under the distribution a sampler with (temperature, top_k, top_p) draws from:
    softmax of logits / temperature with every token outside the top-k, then outside the top-p nucleus, removed
    (vLLM's order; ties at the k-th logit are kept, and the nucleus always keeps the most likely token). This is
    what vLLM reports with `logprobs_mode="processed_logprobs"`; -inf for a token outside the kept set. No grad.

    Args:
        logits_BTV: logits at the positions that predict tokens_BT (any float dtype).
        tokens_BT: token ids (long).
        temperature, top_k, top_p: the sampling settings (top_k -1 or 0 and top_p 1: no truncation).
        chunk_tokens: tokens per fp32 block.
    Returns: logp_BT in fp32 (fp64 for fp64 input).
    """
    acc = _acc_dtype(logits_BTV.dtype)
    B, T, V = logits_BTV.shape
    out = torch.zeros(B, T, dtype=acc, device=logits_BTV.device)
    flat_z, flat_tok, flat_out = logits_BTV.reshape(-1, V), tokens_BT.reshape(-1), out.view(-1)
    for s in range(0, flat_z.shape[0], max(1, chunk_tokens)):
        z = flat_z[s : s + chunk_tokens].to(acc) / temperature
        if 0 < top_k < V:
            kth = z.topk(top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        if top_p < 1.0:
            p_sorted, idx = torch.softmax(z, -1).sort(dim=-1)  # ascending
            drop = p_sorted.cumsum(-1) <= 1 - top_p
            drop[:, -1] = False  # the most likely token always stays
            z = z.scatter(-1, idx, z.gather(-1, idx).masked_fill(drop, float("-inf")))
        tok = flat_tok[s : s + chunk_tokens].long()
        flat_out[s : s + chunk_tokens] = torch.log_softmax(z, -1).gather(-1, tok[:, None])[:, 0]
    return out


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
