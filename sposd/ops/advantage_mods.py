"""Advantage modifiers applied inside the loss, where the learner's log-probs are at hand (spec sections 6, 11, 12).

    cepo   A_t = A [(1 - lam) + lam clip(exp(sign(A) delta_t), 1 - eps, 1 + eps)],
           delta_t = sg(log P_T+(y_t) - log P_T-(y_t))                (CEPO, ahmedheakl/CEPO apply_cepo_weighting)
    ace    A <- A (1 + alpha softplus(c)) for A < 0, else A,
           c = sum_t sg(log pi_old(y_t) - log pi_ref(y_t))  (or the per-token mean)      (ACE, project default)
    gopd   A_t = lam (log pi_T(y_t) - log pi_base(y_t)) - (log pi_old(y_t) - log pi_base(y_t))
                                                                      (G-OPD / ExOPD, RUCBM/G-OPD dp_actor.py)

Every input is treated as a constant (detached): the result is an advantage, fed to the clipped surrogate.

Legend: B rows, T completion tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ACE_REDUCTIONS = ("sum", "mean")


def cepo_token_factors(adv_B: Tensor, pos_logp_BT: Tensor, neg_logp_BT: Tensor, *, lam: float, eps: float) -> Tensor:
    """CEPO's per-token multiplier of A: (1 - lam) + lam clip(exp(sign(A) delta), 1 - eps, 1 + eps).

    The positive teacher saw the gold answer, the negative one a rejected rollout's answer. A token the gold answer
    makes likelier (delta > 0) is up-weighted in a rewarded rollout (A > 0) and down-weighted in a penalised one;
    A = 0 gives 1.

    Args:
        adv_B: sequence advantages A_i (only their sign is used).
        pos_logp_BT, neg_logp_BT: teacher log-probs of each token under the two contexts.
        lam: mixing weight in [0, 1] (0 = plain GRPO).
        eps: the weight is clipped to [1 - eps, 1 + eps].
    Returns: factor_BT.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    acc = torch.promote_types(pos_logp_BT.dtype, torch.float32)
    sign_B1 = torch.sign(adv_B.detach()).to(acc)[:, None]
    delta_BT = (pos_logp_BT - neg_logp_BT).detach().to(acc)
    w_BT = torch.exp(sign_B1 * delta_BT).clamp(1.0 - eps, 1.0 + eps)
    return (1.0 - lam) + lam * w_BT


def cepo_token_advantages(adv_B: Tensor, pos_logp_BT: Tensor, neg_logp_BT: Tensor, *, lam: float, eps: float) -> Tensor:
    """A_t = A x `cepo_token_factors` (CEPO, ahmedheakl/CEPO apply_cepo_weighting). Returns adv_BT."""
    factor_BT = cepo_token_factors(adv_B, pos_logp_BT, neg_logp_BT, lam=lam, eps=eps)
    return adv_B.detach().to(factor_BT.dtype)[:, None] * factor_BT


def confidence_shift(old_logp_BT: Tensor, ref_logp_BT: Tensor, mask_BT: Tensor, *, reduce: str = "sum") -> Tensor:
    """c_i = sum (or mean) over the completion's tokens of sg(log pi_old - log pi_ref): how much more confident the
    sampling policy is in this completion than the initial policy. Returns c_B."""
    if reduce not in ACE_REDUCTIONS:
        raise ValueError(f"reduce {reduce!r} is not one of {list(ACE_REDUCTIONS)}")
    diff_BT = (old_logp_BT - ref_logp_BT).detach() * mask_BT
    c_B = diff_BT.sum(-1)
    return c_B / mask_BT.sum(-1).clamp(min=1) if reduce == "mean" else c_B


def ace_advantages(adv_B: Tensor, shift_B: Tensor, *, alpha: float) -> Tensor:
    """ACE's asymmetric confidence penalty: A (1 + alpha softplus(c)) where A < 0; A >= 0 unchanged.

    Args:
        adv_B: sequence advantages.
        shift_B: confidence shift c_i (`confidence_shift`).
        alpha: penalty strength (>= 0).
    Returns: adv_B.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    scale_B = 1.0 + alpha * F.softplus(shift_B.detach().to(adv_B.dtype))
    return torch.where(adv_B < 0, adv_B * scale_B, adv_B).detach()


def gopd_advantages(teacher_logp_BT: Tensor, base_logp_BT: Tensor, old_logp_BT: Tensor, *, lam: float) -> Tensor:
    """G-OPD's per-token advantage: lam x the teacher's log-likelihood gain over the base model, minus the sampling
    policy's (lam = 1: standard OPD, A_t = log pi_T - log pi_old; lam > 1: ExOPD reward extrapolation). No group
    normalisation. Returns adv_BT."""
    t, b, o = (x.detach() for x in (teacher_logp_BT, base_logp_BT, old_logp_BT))
    return lam * (t - b) - (o - b)
