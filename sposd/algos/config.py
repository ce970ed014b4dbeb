"""Schema of the `algo` config group: the single source of its defaults (YAMLs under conf/algo/ override).

`AlgoCfg` (the RL term and what every algorithm shares) and `AdvModCfg` live here; the distillation term's
schemas (`DistillCfg` and its nested `TipCfg`, `ExposureCfg`, `PartialCfg`) live in `distill_config.py` and are
re-exported, so `sposd.algos.config.X` keeps working for every X in `__all__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sposd.algos.adv_mod import ADV_MODIFIERS
from sposd.algos.adv_mod import SCORE_CONTEXTS as SCORE_CONTEXT_BUILDERS
from sposd.algos.config_checks import _at_least, _choice
from sposd.algos.distill.contexts import TEACHER_CONTEXTS
from sposd.algos.distill.selections import TOKEN_SELECTIONS, TOKEN_WEIGHTINGS  # noqa: F401 (importable here before)
from sposd.algos.distill_config import (
    CLIP_MODES,
    CONTEXTS,
    DISTILL_NORMS,
    DIVERGENCE_KINDS,
    INTERP_PARTNERS,
    MISMATCH_SIGNS,
    OVERLAPS,
    PREFIXES,
    PROMPT_WEIGHT_KINDS,
    REFERENCE_CONTEXTS,
    SELECTIONS,
    SUPPORTS,
    TEACHER_WEIGHTS,
    THINK_BOUNDARIES,
    TOKEN_WEIGHTS,
    WRAPPERS,
    DistillCfg,
    ExposureCfg,
    PartialCfg,
    TipCfg,
)
from sposd.ops.aggregation import AGG_MODES

__all__ = [
    "ADV_MODS",
    "AdvModCfg",
    "AlgoCfg",
    "CLIP_MODES",
    "CONTEXTS",
    "DISTILL_NORMS",
    "DIVERGENCE_KINDS",
    "DistillCfg",
    "ExposureCfg",
    "INTERP_PARTNERS",
    "MISMATCH_SIGNS",
    "OVERLAPS",
    "PREFIXES",
    "PROMPT_WEIGHT_KINDS",
    "PartialCfg",
    "REAL_MODEL_MAX_LR",
    "REFERENCE_CONTEXTS",
    "SCORE_CONTEXTS",
    "SELECTIONS",
    "STUDENT_PROMPTS",
    "SUPPORTS",
    "TEACHER_WEIGHTS",
    "THINK_BOUNDARIES",
    "TOKEN_WEIGHTS",
    "TipCfg",
    "WRAPPERS",
    "recipe_warnings",
]

STUDENT_PROMPTS = ("chat_template", "stripped_template")
ADV_MODS = tuple(ADV_MODIFIERS)
SCORE_CONTEXTS = tuple(SCORE_CONTEXT_BUILDERS)


@dataclass(kw_only=True)
class AdvModCfg:
    """An advantage modifier of the RL term, computed in the loss from the learner's log-probs (spec 6, 11, 12).

    Attributes:
        kind: "none" | "cepo" (per-token reweighting by two answer-conditioned teacher passes) | "ace" (negative
            advantages scaled by the confidence shift against the initial policy) | "gopd" (the advantage IS
            lambda (log pi_T - log pi_base) - (log pi_old - log pi_base) per token; no group normalisation).
        teacher: weights of the scoring teacher (cepo, gopd): "current" (the policy, no grad) | "initial".
        context: what the scoring teacher sees: "answer_contrast" (cepo: the student prompt, assistant header
            included, followed by " {gold answer}" / " {a rejected rollout's boxed answer}") | "reference_solution"
            (gopd: OPSD's privileged message with the dataset's solution, as `algo.distill.wrapper` renders it).
        cepo_lambda, cepo_schedule, cepo_warmup_steps, cepo_eps: lambda at step 1; "linear" decays it to 0 over
            cepo_warmup_steps steps (lambda_s = max(0, lambda (1 - (s-1)/warmup))) or "constant"; the weight
            exp(sign(A) delta) is clipped to [1 - eps, 1 + eps].
        cepo_fallback_chars: a rejected rollout without a boxed answer contributes its first N characters.
        ace_alpha, ace_reduce: A <- A (1 + alpha softplus(c)) for A < 0, c = "sum" (or "mean") over the tokens of
            sg(log pi_old - log pi_ref).
        gopd_lambda: reward scale lambda (1 = standard OPD, > 1 = ExOPD's extrapolation).
    """

    kind: str = "none"
    teacher: str = "current"
    context: str = "answer_contrast"
    cepo_lambda: float = 0.5
    cepo_schedule: str = "linear"
    cepo_warmup_steps: int = 25
    cepo_eps: float = 0.2
    cepo_fallback_chars: int = 50
    ace_alpha: float = 0.5
    ace_reduce: str = "sum"
    gopd_lambda: float = 1.25

    @property
    def scores(self) -> bool:
        """Whether this modifier needs teacher log-probs of the sampled tokens (a scoring pass)."""
        return self.num_contexts > 0

    @property
    def num_contexts(self) -> int:
        """Teacher contexts scored per completion."""
        cls = ADV_MODIFIERS[self.kind]
        return 0 if cls is None else cls.num_contexts

    @property
    def needs_solution(self) -> bool:
        """Whether its scoring context is built from the dataset's reference solution."""
        return self.scores and SCORE_CONTEXT_BUILDERS[self.context][1]

    def __post_init__(self) -> None:
        a = "adv_mod."
        _choice(a + "kind", self.kind, ADV_MODS)
        _choice(a + "teacher", self.teacher, ("current", "initial"))
        _choice(a + "context", self.context, SCORE_CONTEXTS)
        want = getattr(ADV_MODIFIERS[self.kind], "score_context", None)
        if want is not None and self.context != want:
            raise ValueError(
                f"algo.adv_mod.kind={self.kind} scores {ADV_MODIFIERS[self.kind].num_contexts} context(s) of kind "
                f"{want}: set algo.adv_mod.context={want} (got {self.context})"
            )
        if not 0 <= self.cepo_lambda <= 1:
            raise ValueError(f"algo.adv_mod.cepo_lambda must be in [0, 1], got {self.cepo_lambda}")
        _choice(a + "cepo_schedule", self.cepo_schedule, ("linear", "constant"))
        _at_least(a + "cepo_warmup_steps", self.cepo_warmup_steps, 1)
        if not 0 <= self.cepo_eps < 1:
            raise ValueError(f"algo.adv_mod.cepo_eps must be in [0, 1), got {self.cepo_eps}")
        _at_least(a + "cepo_fallback_chars", self.cepo_fallback_chars, 1)
        _at_least(a + "ace_alpha", self.ace_alpha, 0)
        _choice(a + "ace_reduce", self.ace_reduce, ("sum", "mean"))
        if not self.gopd_lambda > 0:
            raise ValueError(f"algo.adv_mod.gopd_lambda must be > 0, got {self.gopd_lambda}")


REAL_MODEL_MAX_LR = 1e-5


def recipe_warnings(
    algo: AlgoCfg, *, model_path: str, lr: float, model_name: str = "", lora_rank: int = 0
) -> list[str]:
    """One line per thing a run should say at start (and in config.yaml): a real model trained in full at an lr
    above 1e-5.

    Args:
        algo: the algorithm config.
        model_path: model.path ("builtin" = the embedded tiny model, which trains at 1e-4 on purpose).
        lr: optim.lr.
        model_name: model.name ("tiny": the tiny preset pointed at a local copy, e.g. in tests; no lr warning).
        lora_rank: model.lora.rank (> 0: a LoRA adapter, which usually trains at higher rates; no lr warning).
    """
    out = []
    if model_path != "builtin" and model_name != "tiny" and not lora_rank and lr > REAL_MODEL_MAX_LR:
        out.append(
            f"optim.lr={lr:g} is above {REAL_MODEL_MAX_LR:g} for a real model ({model_path}): full-parameter RL at "
            "this rate usually collapses; the Qwen3 presets default to 1e-6 (set optim.lr to silence this)"
        )
    return out


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
        student_thinking: the chat template's thinking switch for the student's prompt (rollouts and learner);
            null = model.enable_thinking. OPSD-v3 trains a non-thinking student (`student_thinking=False`).
        distill: the self-distillation term (`DistillCfg`); off unless distill.coef > 0.
        adv_mod: an advantage modifier of the RL term (`AdvModCfg`); off unless adv_mod.kind != "none".
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
    student_thinking: bool | None = None
    distill: DistillCfg = field(default_factory=DistillCfg)
    adv_mod: AdvModCfg = field(default_factory=AdvModCfg)

    def __post_init__(self) -> None:
        _at_least("group_size", self.group_size, 1)
        _choice("student_prompt", self.student_prompt, STUDENT_PROMPTS)
        if self.rl_coef == 0 and not self.distill.enabled:
            raise ValueError("algo.rl_coef = 0 and algo.distill.coef = 0: the loss would be empty")
        dist = self.distill
        compares = dist.context != "none" and TEACHER_CONTEXTS[dist.context].compares_group
        if dist.enabled and self.group_size < 2 and (compares or TOKEN_SELECTIONS[dist.select].compares_group):
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
        mod = self.adv_mod
        if mod.kind != "none" and self.rl_coef == 0:
            raise ValueError(
                f"algo.adv_mod.kind={mod.kind} modifies the RL term's advantages: it needs algo.rl_coef > 0"
            )
        if mod.scores and dist.enabled and dist.teacher != mod.teacher:
            raise ValueError(
                "the distillation term and the advantage modifier share one teacher copy: set algo.adv_mod.teacher "
                f"and algo.distill.teacher to the same weights (got {mod.teacher} and {dist.teacher})"
            )
