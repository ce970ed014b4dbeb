"""PPO-clip policy-gradient loss and the k3 KL-to-reference penalty (verl `compute_policy_loss_vanilla`,
`kl_penalty(..., "low_var_kl")`).

Legend: B rows of this micro-batch, T completion tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sposd.ops.aggregation import aggregate
from sposd.ops.types import LossOut


def _token_mean(x_BT: Tensor, mask_BT: Tensor, num_tokens: float) -> Tensor:
    return (x_BT.float() * mask_BT).sum() / num_tokens


def clipped_surrogate(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv: Tensor,
    mask_BT: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip_c: float | None,
    agg: str,
    num_tokens: float,
    num_seqs: float,
    max_len: int,
) -> LossOut:
    """Clipped surrogate with optional dual clip, aggregated with global counts.

    Per token, with r = exp(clamp(logp - old_logp, -20, 20)):
        l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high));  for A < 0 and dual clip: l = min(l, -A c).

    Args:
        logp_BT: current-policy log-probs (differentiated).
        old_logp_BT: behaviour-policy log-probs (treated as constants).
        adv: per-sequence advantage [B] (broadcast over tokens) or per-token advantage [B, T] (CEPO, G-OPD),
            treated as a constant.
        mask_BT: 1.0 where a token receives loss.
        clip_low, clip_high: PPO clip range [1 - clip_low, 1 + clip_high] (DAPO clip-higher: 0.2, 0.28).
        dual_clip_c: lower bound c > 1 on the loss of negative-advantage tokens (Ye et al. 2019), None = off.
        agg, num_tokens, num_seqs, max_len: see `sposd.ops.aggregation.aggregate`.
    Returns: LossOut(loss, {"loss/clip_frac", "loss/dual_clip_frac", "actor/approx_kl", "actor/ratio_mean"}),
        metrics as token means over the global num_tokens.
    """
    log_ratio_BT = (logp_BT - old_logp_BT.detach()).clamp(-20.0, 20.0)
    ratio_BT = torch.exp(log_ratio_BT)
    adv_BT = (adv[:, None] if adv.dim() == 1 else adv).detach().to(ratio_BT.dtype)  # [B, 1] broadcasts over T
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(1.0 - clip_low, 1.0 + clip_high)
    clip_loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    loss_BT = clip_loss_BT
    if dual_clip_c is not None:
        loss_BT = torch.where(adv_BT < 0, torch.minimum(clip_loss_BT, -adv_BT * dual_clip_c), clip_loss_BT)
    loss = aggregate(loss_BT, mask_BT, mode=agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    with torch.no_grad():
        metrics = {
            "loss/clip_frac": _token_mean(clipped_BT > unclipped_BT, mask_BT, num_tokens),
            "loss/dual_clip_frac": 0.0
            if dual_clip_c is None
            else _token_mean((clip_loss_BT > -adv_BT * dual_clip_c) & (adv_BT < 0), mask_BT, num_tokens),
            "actor/approx_kl": _token_mean(-log_ratio_BT, mask_BT, num_tokens),
            "actor/ratio_mean": _token_mean(ratio_BT, mask_BT, num_tokens),
        }
    return LossOut(loss, metrics)


def kl_penalty_k3(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    """Schulman's k3 ("low_var_kl") estimate of KL(pi || pi_ref) per token, clamped as verl does.

    kl = exp(d) - d - 1 with d = clamp(ref_logp - logp, -20, 20), then clamped to [-10, 10].

    Args:
        logp_BT: current-policy log-probs (differentiated).
        ref_logp_BT: reference-policy log-probs (treated as constants).
    Returns: kl_BT (>= 0 up to the clamp).
    """
    d_BT = (ref_logp_BT.detach() - logp_BT).clamp(-20.0, 20.0)
    return (torch.exp(d_BT) - d_BT - 1.0).clamp(-10.0, 10.0)
