"""Schema of the `algo` config group: the single source of its defaults (YAMLs under conf/algo/ override)."""

from __future__ import annotations

from dataclasses import dataclass

from sposd.ops.aggregation import AGG_MODES


def _at_least(field: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"algo.{field} must be >= {low}, got {value}")


@dataclass(kw_only=True)
class AlgoCfg:
    """Algorithm knobs. The GRPO family (grpo, dapo, dr_grpo) differs only in these values.

    Attributes:
        name: registered algorithm (`sposd.algos.get_algo`).
        group_size: completions sampled per prompt (G).
        rl_coef: weight of the clipped policy-gradient term.
        adv_std_norm: divide centred rewards by the group std (GRPO, DAPO) or not (Dr.GRPO).
        adv_eps: added to the group std.
        clip_low, clip_high: PPO ratio clip range [1 - clip_low, 1 + clip_high].
        dual_clip_c: dual-clip bound (> 1) for negative advantages; None disables it.
        loss_agg: one of `sposd.ops.AGG_MODES`.
        loss_scale_len: the constant L of "seq-mean-token-sum-norm"; None -> the learner uses max_new_tokens.
        kl_coef: weight of the k3 KL to the initial policy; > 0 makes the learner keep a reference model.
        dynamic_sampling: keep only groups of mixed correctness, re-sampling up to max_gen_batches (DAPO).
        max_gen_batches: generation rounds allowed to fill a batch when dynamic_sampling.
        overlong_buffer: L_cache of DAPO's soft overlong punishment, in tokens; 0 = off.
        overlong_penalty: reward penalty at max_new_tokens (verl `overlong_penalty_factor`).
        mask_truncated: drop completions that hit max_new_tokens from the loss (DAPO overlong filtering).
        ppo_epochs: passes over each rollout batch.
        num_minibatches: optimiser steps per pass.
    """

    name: str = "grpo"
    group_size: int = 8
    rl_coef: float = 1.0
    adv_std_norm: bool = True
    adv_eps: float = 1e-6
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = 3.0
    loss_agg: str = "seq-mean-token-mean"
    loss_scale_len: int | None = None
    kl_coef: float = 0.0
    dynamic_sampling: bool = False
    max_gen_batches: int = 4
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    mask_truncated: bool = False
    ppo_epochs: int = 1
    num_minibatches: int = 1

    def __post_init__(self) -> None:
        _at_least("group_size", self.group_size, 1)
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError(
                f"algo.dynamic_sampling needs algo.group_size >= 2 (a group of one is never mixed), "
                f"got group_size={self.group_size}"
            )
        if not self.adv_eps > 0:
            raise ValueError(
                f"algo.adv_eps must be > 0 (a group with equal rewards has std 0), got {self.adv_eps}"
            )
        for field in ("rl_coef", "kl_coef", "overlong_buffer", "overlong_penalty"):
            _at_least(field, getattr(self, field), 0)
        for field in ("max_gen_batches", "ppo_epochs", "num_minibatches"):
            _at_least(field, getattr(self, field), 1)
        if not 0 <= self.clip_low <= self.clip_high or self.clip_low >= 1:
            raise ValueError(
                f"algo.clip_low/clip_high need 0 <= clip_low <= clip_high and clip_low < 1, "
                f"got clip_low={self.clip_low}, clip_high={self.clip_high}"
            )
        if self.dual_clip_c is not None and self.dual_clip_c <= 1:
            raise ValueError(f"algo.dual_clip_c must be > 1 or null (off), got {self.dual_clip_c}")
        if self.loss_agg not in AGG_MODES:
            raise ValueError(f"algo.loss_agg={self.loss_agg!r} is not one of {list(AGG_MODES)}")
        if self.loss_scale_len is not None:
            _at_least("loss_scale_len", self.loss_scale_len, 1)
