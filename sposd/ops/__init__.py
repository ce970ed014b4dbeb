"""Pure tensor math for RL and distillation losses (torch only; no config, no distributed state)."""

from sposd.ops.advantage_mods import (
    ace_advantages,
    cepo_token_advantages,
    cepo_token_factors,
    confidence_shift,
    gopd_advantages,
)
from sposd.ops.advantages import group_advantages, ragged_group_advantages
from sposd.ops.aggregation import AGG_MODES, aggregate
from sposd.ops.divergence import (
    DIVERGENCES,
    SUPPORTS,
    divergence_from_logprobs,
    divergence_with_stats,
    naive_divergence,
    per_token_divergence,
    resolve_divergence,
)
from sposd.ops.divergence_blocks import CLIP_MODES, STAT_KEYS, block_divergence, block_divergence_grad
from sposd.ops.logprobs import entropy_from_logits, linear_token_logprobs, token_logprobs
from sposd.ops.overlap import anchor_recall, lcs_length, overlap, reference_anchors, reveal_count, reveal_ratio
from sposd.ops.policy_loss import clipped_surrogate, kl_penalty_k3
from sposd.ops.repetition import ends_in_loop
from sposd.ops.selection import prefix_length, prompt_weight, select_longest_minority, select_longest_wrong
from sposd.ops.shaping import overlong_penalty
from sposd.ops.teacher_signal import (
    entropy_mismatch_mask,
    interpolate_teacher_logits_,
    sampled_token_loss,
    sg_topk_reverse_kl,
    teacher_support_entropy,
)
from sposd.ops.token_selection import (
    entropy_token_weights,
    q3_mask,
    q3_thresholds,
    tip_num_kept,
    tip_select,
    tip_token_stats,
    tip_weights,
)
from sposd.ops.types import LossOut

__all__ = [
    "CLIP_MODES",
    "STAT_KEYS",
    "anchor_recall",
    "block_divergence",
    "block_divergence_grad",
    "divergence_with_stats",
    "ends_in_loop",
    "reference_anchors",
    "select_longest_minority",
    "ace_advantages",
    "cepo_token_advantages",
    "cepo_token_factors",
    "confidence_shift",
    "entropy_token_weights",
    "gopd_advantages",
    "linear_token_logprobs",
    "q3_mask",
    "q3_thresholds",
    "sg_topk_reverse_kl",
    "teacher_support_entropy",
    "tip_num_kept",
    "tip_select",
    "tip_token_stats",
    "tip_weights",
    "AGG_MODES",
    "DIVERGENCES",
    "SUPPORTS",
    "divergence_from_logprobs",
    "entropy_mismatch_mask",
    "interpolate_teacher_logits_",
    "lcs_length",
    "naive_divergence",
    "overlap",
    "per_token_divergence",
    "prefix_length",
    "prompt_weight",
    "resolve_divergence",
    "reveal_count",
    "reveal_ratio",
    "sampled_token_loss",
    "select_longest_wrong",
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
