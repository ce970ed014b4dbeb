"""Pure tensor math for RL and distillation losses (torch only; no config, no distributed state)."""

from sposd.ops.advantages import group_advantages, ragged_group_advantages
from sposd.ops.aggregation import AGG_MODES, aggregate
from sposd.ops.logprobs import entropy_from_logits, token_logprobs
from sposd.ops.policy_loss import clipped_surrogate, kl_penalty_k3
from sposd.ops.shaping import overlong_penalty
from sposd.ops.types import LossOut

__all__ = [
    "AGG_MODES",
    "LossOut",
    "aggregate",
    "clipped_surrogate",
    "entropy_from_logits",
    "group_advantages",
    "kl_penalty_k3",
    "overlong_penalty",
    "ragged_group_advantages",
    "token_logprobs",
]
