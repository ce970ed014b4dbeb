"""Reduce a per-token loss matrix to the scalar that is differentiated (verl `agg_loss`, with global counts).

Legend: B rows of this micro-batch, T completion tokens.
"""

from __future__ import annotations

from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(
    loss_BT: Tensor, mask_BT: Tensor, *, mode: str, num_tokens: float, num_seqs: float, max_len: int
) -> Tensor:
    """This micro-batch's share of the batch loss; shares add up over micro-batches and data-parallel ranks.

    Normalisers are GLOBAL counts (all micro-batches, all ranks), so the result never depends on how the batch
    was split: summing `aggregate` over the pieces equals `aggregate` over the whole batch.

    - "token-mean" (DAPO):         sum_{i,t} m l / num_tokens
    - "seq-mean-token-mean" (GRPO): sum_i [sum_t m l / sum_t m] / num_seqs   (fully masked rows add 0)
    - "seq-mean-token-sum":         sum_{i,t} m l / num_seqs
    - "seq-mean-token-sum-norm" (Dr.GRPO): sum_{i,t} m l / (num_seqs * max_len)

    The last mode follows the Dr.GRPO paper (mean over sequences of token sums divided by a constant L).
    verl's version divides each micro-batch's token sum by that micro-batch's mask width, with no mean over
    sequences, so its scale depends on the micro-batch size and padding; ours does not.

    Args:
        loss_BT: per-token loss.
        mask_BT: 1.0 where a token receives loss.
        mode: one of AGG_MODES.
        num_tokens: global count of loss tokens (> 0).
        num_seqs: global count of sequences (> 0); count only sequences that have loss tokens.
        max_len: the constant L of "seq-mean-token-sum-norm" (max generation length).
    Returns: scalar tensor.
    """
    masked_BT = loss_BT * mask_BT
    if mode == "token-mean":
        return masked_BT.sum() / num_tokens
    if mode == "seq-mean-token-mean":
        return (masked_BT.sum(-1) / mask_BT.sum(-1).clamp(min=1)).sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return masked_BT.sum() / num_seqs
    if mode == "seq-mean-token-sum-norm":
        return masked_BT.sum() / (num_seqs * max_len)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; choose from {list(AGG_MODES)}")
