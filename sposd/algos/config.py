"""Schema of the `algo` config group: the single source of its defaults (YAMLs under conf/algo/ override)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sposd.ops.aggregation import AGG_MODES

CONTEXTS = ("none", "reference_solution", "shortest_correct", "partial_solution")
TEACHER_WEIGHTS = ("current", "initial", "ema", "periodic")
SELECTIONS = ("all", "longest_wrong", "entropy_mismatch")
PREFIXES = ("all", "cap", "witness")
DIVERGENCE_KINDS = ("fkl", "rkl", "jsd")
SUPPORTS = ("full", "teacher_topk", "student_topk_tail")
PROMPT_WEIGHT_KINDS = ("none", "frontier", "indicator", "beta", "sqrt")
DISTILL_NORMS = ("prompt_mean", "token_mean")
MISMATCH_SIGNS = ("abs", "teacher_sharper", "student_sharper")
STUDENT_PROMPTS = ("chat_template", "stripped_template")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"algo.{key}={value!r} is not valid; choose from {list(choices)}")


@dataclass(kw_only=True)
class DistillCfg:
    """The self-distillation term: teacher = the model (or a copy) shown privileged context, scored on the
    student's own tokens (spec/ALGORITHMS.md sections 0.3-0.4, 2, 14, 15). Every slot is a component any
    algorithm can pick; `coef` = 0 leaves the term out.

    Attributes:
        coef: lambda, the weight of the distillation term (0 = off).
        coef_schedule: "constant" | "linear_decay" (to coef * coef_final_ratio at the last step) | "warmup".
        coef_warmup_steps, coef_final_ratio: knobs of those schedules.
        context: privileged text of the teacher: "reference_solution" (OPSD: the dataset's verified solution),
            "shortest_correct" (SSOPD: the group's shortest correct completion), "partial_solution" (PAINT: the
            reference cut according to rollout-reference overlap).
        wrapper: teacher message around the privileged text: "opsd" (OPSD's exact template) | "sdpo".
        witness_thinking: "keep" the witness's <think> part or "strip" it (SDPO strips).
        teacher: weights of the teacher: "current" (the policy, no grad; no second copy), "initial" (a frozen
            copy of the starting weights), "ema" (theta_T <- (1-ema_rate) theta_T + ema_rate theta after each
            optimiser step), "periodic" (copied from the policy every update_every optimiser steps).
        select: which tokens get the loss: "all" completions, "longest_wrong" (SSOPD: prefixes of the longest
            wrong completion of each mixed group), "entropy_mismatch" (only PAINT's sparse positions).
        prefix: for longest_wrong: "all" positions | "cap" (first prefix_cap) | "witness" (first len(witness)).
        exclude_truncated_wrong: a wrong completion that hit max_new_tokens may not be the longest wrong one.
        num_wrong: "one" (the longest wrong, the literal rule) | "all" wrong completions of a mixed group.
        length_unit: "tokens" | "chars" for shortest / longest.
        divergence: "fkl" KL(T||S) | "rkl" KL(S||T) | "jsd" (generalised JSD(beta); beta 0 -> fkl, 1 -> rkl).
        support: "full" vocabulary (chunked) | "teacher_topk" (renormalised) | "student_topk_tail" (+ tail bucket).
        sampled_token: the single-sample reverse-KL estimator -sg(log T(y) - log S(y)) log S(y) (needs rkl).
        clip_max: per-token pointwise clip min(D_t, clip_max); null = off.
        is_clip: multiply D_t by sg(min(pi/pi_old, is_clip)) (SDPO, 2.0); null = off.
        loss_temperature: divides both logits in the loss; null = the rollout temperature.
        prompt_weight: "frontier" 4 p(1-p) | "indicator" 1[0<p<1] | "beta" p^a (1-p)^b | "sqrt" | "none".
        prompt_weight_a, prompt_weight_b: exponents of "beta".
        normalize: "prompt_mean" (mean over a prompt's selected tokens, then over prompts with a target; SSOPD)
            | "token_mean" (over all selected tokens of the batch; OPSD's batchmean).
        reveal_min, reveal_direction, overlap, reveal_unit, hidden_marker: PAINT's partial solution: reveal
            rho = clip(reveal_min + (1 - reveal_min) o) of the reference, o = overlap(rollout, reference)
            ("lcs_recall" | "unigram_recall" | "bigram_recall"); "more_when_close" uses o, "more_when_far"
            1 - o; cut by "tokens" or "lines"; hidden_marker appends a line saying the rest is hidden.
        interp_gamma: PAINT's energy-space interpolation z* = (1-gamma) z_T + gamma sg(z_S) at the entropy-mismatch
            positions (0 = off).
        mismatch_q, mismatch_sign: the entropy-mismatch set: per sequence the top ceil(q * len) positions by
            |H_T - H_S| ("abs"), H_S - H_T ("teacher_sharper") or H_T - H_S ("student_sharper").
        chunk_tokens: positions per fp32 [chunk, V] block of the full-vocabulary divergence.
    """

    coef: float = 0.0
    coef_schedule: str = "constant"
    coef_warmup_steps: int = 0
    coef_final_ratio: float = 0.0
    context: str = "none"
    wrapper: str = "opsd"
    witness_thinking: str = "keep"
    teacher: str = "current"
    ema_rate: float = 0.05
    update_every: int = 50
    select: str = "all"
    prefix: str = "all"
    prefix_cap: int | None = None
    exclude_truncated_wrong: bool = False
    num_wrong: str = "one"
    length_unit: str = "tokens"
    divergence: str = "jsd"
    beta: float = 0.5
    support: str = "full"
    topk: int = 50
    sampled_token: bool = False
    clip_max: float | None = None
    is_clip: float | None = None
    loss_temperature: float | None = None
    prompt_weight: str = "none"
    prompt_weight_a: float = 1.0
    prompt_weight_b: float = 1.0
    normalize: str = "token_mean"
    reveal_min: float = 0.25
    reveal_direction: str = "more_when_close"
    overlap: str = "lcs_recall"
    reveal_unit: str = "tokens"
    hidden_marker: bool = False
    interp_gamma: float = 0.0
    mismatch_q: float = 0.1
    mismatch_sign: str = "abs"
    chunk_tokens: int = 256

    @property
    def enabled(self) -> bool:
        return self.coef > 0

    def __post_init__(self) -> None:
        d = "distill."
        _at_least(d + "coef", self.coef, 0)
        _choice(d + "coef_schedule", self.coef_schedule, ("constant", "linear_decay", "warmup"))
        if self.coef_schedule == "warmup":
            _at_least(d + "coef_warmup_steps", self.coef_warmup_steps, 1)
        if not 0 <= self.coef_final_ratio <= 1:
            raise ValueError(f"algo.distill.coef_final_ratio must be in [0, 1], got {self.coef_final_ratio}")
        _choice(d + "context", self.context, CONTEXTS)
        _choice(d + "wrapper", self.wrapper, ("opsd", "sdpo"))
        _choice(d + "witness_thinking", self.witness_thinking, ("keep", "strip"))
        _choice(d + "teacher", self.teacher, TEACHER_WEIGHTS)
        if not 0 < self.ema_rate <= 1:
            raise ValueError(f"algo.distill.ema_rate must be in (0, 1], got {self.ema_rate}")
        _at_least(d + "update_every", self.update_every, 1)
        _choice(d + "select", self.select, SELECTIONS)
        _choice(d + "prefix", self.prefix, PREFIXES)
        if self.prefix == "cap" and (self.prefix_cap is None or self.prefix_cap < 1):
            raise ValueError(f"algo.distill.prefix=cap needs algo.distill.prefix_cap >= 1, got {self.prefix_cap}")
        _choice(d + "num_wrong", self.num_wrong, ("one", "all"))
        _choice(d + "length_unit", self.length_unit, ("tokens", "chars"))
        _choice(d + "divergence", self.divergence, DIVERGENCE_KINDS)
        if not 0 <= self.beta <= 1:
            raise ValueError(f"algo.distill.beta must be in [0, 1], got {self.beta}")
        _choice(d + "support", self.support, SUPPORTS)
        _at_least(d + "topk", self.topk, 1)
        if self.sampled_token and not (self.divergence == "rkl" or (self.divergence == "jsd" and self.beta == 1)):
            raise ValueError(
                "algo.distill.sampled_token estimates the reverse KL only: set algo.distill.divergence=rkl "
                f"(got divergence={self.divergence}, beta={self.beta})"
            )
        for key in ("clip_max", "is_clip", "loss_temperature"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ValueError(f"algo.distill.{key} must be > 0 or null (off), got {v}")
        _choice(d + "prompt_weight", self.prompt_weight, PROMPT_WEIGHT_KINDS)
        _choice(d + "normalize", self.normalize, DISTILL_NORMS)
        if not 0 <= self.reveal_min <= 1:
            raise ValueError(f"algo.distill.reveal_min must be in [0, 1], got {self.reveal_min}")
        _choice(d + "reveal_direction", self.reveal_direction, ("more_when_close", "more_when_far"))
        _choice(d + "overlap", self.overlap, ("lcs_recall", "unigram_recall", "bigram_recall"))
        _choice(d + "reveal_unit", self.reveal_unit, ("tokens", "lines"))
        if not 0 <= self.interp_gamma <= 1:
            raise ValueError(f"algo.distill.interp_gamma must be in [0, 1], got {self.interp_gamma}")
        if not 0 < self.mismatch_q <= 1:
            raise ValueError(f"algo.distill.mismatch_q must be in (0, 1], got {self.mismatch_q}")
        _choice(d + "mismatch_sign", self.mismatch_sign, MISMATCH_SIGNS)
        _at_least(d + "chunk_tokens", self.chunk_tokens, 1)
        if self.enabled and self.context == "none":
            raise ValueError(
                "algo.distill.coef > 0 needs a teacher context: set algo.distill.context to one of "
                f"{list(CONTEXTS[1:])}"
            )


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
        student_prompt: "chat_template" or "stripped_template" (OPSD's paper setting: the chat template with
            its special tokens removed, as its vLLM path produced).
        distill: the self-distillation term (`DistillCfg`); off unless distill.coef > 0.
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
    student_prompt: str = "chat_template"
    distill: DistillCfg = field(default_factory=DistillCfg)

    def __post_init__(self) -> None:
        _at_least("group_size", self.group_size, 1)
        _choice("student_prompt", self.student_prompt, STUDENT_PROMPTS)
        if self.rl_coef == 0 and not self.distill.enabled:
            raise ValueError("algo.rl_coef = 0 and algo.distill.coef = 0: the loss would be empty")
        dist = self.distill
        if (
            dist.enabled
            and self.group_size < 2
            and (dist.context == "shortest_correct" or dist.select == "longest_wrong")
        ):
            raise ValueError(
                f"algo.distill.context={dist.context} / select={dist.select} compare completions within a group: "
                f"they need algo.group_size >= 2, got {self.group_size}"
            )
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError(
                f"algo.dynamic_sampling needs algo.group_size >= 2 (a group of one is never mixed), "
                f"got group_size={self.group_size}"
            )
        if not self.adv_eps > 0:
            raise ValueError(f"algo.adv_eps must be > 0 (a group with equal rewards has std 0), got {self.adv_eps}")
        for key in ("rl_coef", "kl_coef", "overlong_buffer", "overlong_penalty"):
            _at_least(key, getattr(self, key), 0)
        for key in ("max_gen_batches", "ppo_epochs", "num_minibatches"):
            _at_least(key, getattr(self, key), 1)
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
