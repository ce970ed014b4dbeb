"""Schema of `algo.distill`, the self-distillation term (`DistillCfg`), and of its nested groups: TIP's token
sampling (`TipCfg`, algo.distill.tip.*), ATESD's exposure controller (`ExposureCfg`, algo.distill.exposure.*)
and PAINT's partial reference (`PartialCfg`, algo.distill.partial.*)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sposd.algos.config_checks import _at_least, _choice
from sposd.algos.distill.contexts import TEACHER_CONTEXTS
from sposd.algos.distill.selections import TOKEN_SELECTIONS, TOKEN_WEIGHTINGS

# the registered components (sposd/algos/distill/): each config value is a class, validated against the registry
CONTEXTS = ("none", *TEACHER_CONTEXTS)
# contexts that need the dataset's reference solution
REFERENCE_CONTEXTS = tuple(n for n, c in TEACHER_CONTEXTS.items() if c.needs_solution)
TEACHER_WEIGHTS = ("current", "initial", "ema", "periodic")
SELECTIONS = tuple(TOKEN_SELECTIONS)
CLIP_MODES = ("token", "element")
THINK_BOUNDARIES = ("none", "open_think")
INTERP_PARTNERS = ("student", "full_solution_teacher")
OVERLAPS = ("anchor_recall", "lcs_recall", "unigram_recall", "bigram_recall")
PREFIXES = ("all", "cap", "witness")
DIVERGENCE_KINDS = ("fkl", "rkl", "jsd", "sg_topk_rkl")
SUPPORTS = ("full", "teacher_topk", "student_topk_tail", "student_topk")
PROMPT_WEIGHT_KINDS = ("none", "frontier", "indicator", "beta", "sqrt")
DISTILL_NORMS = ("prompt_mean", "token_mean")
MISMATCH_SIGNS = ("abs", "teacher_sharper", "student_sharper")
WRAPPERS = ("opsd", "opsd_v3", "sdpo", "sdpo_exact")
TOKEN_WEIGHTS = tuple(TOKEN_WEIGHTINGS)


@dataclass(kw_only=True)
class TipCfg:
    """TIP's token sampling (select "tip"; spec section 8).

    Attributes:
        ratio, alpha, gamma: keep max(1, floor(ratio N)) of the batch's N distilled positions, drawn with probability
            prop. to max(h, 1e-8)^alpha max(j, 1e-8)^gamma, h = H(S)/ln|V|, j = JSD_0.5(S, T)/ln 2, both times
            scale (j over the teacher's top jsd_topk renormalised when > 0). Kept positions are weighted
            N / (number kept), so the token mean is over kept positions.
        region, h_quantile, j_quantile: "all" | "q3" (draw only among positions with h below its h_quantile and j
            above its j_quantile, batch quantiles).
    """

    ratio: float = 0.5
    alpha: float = 1.0
    gamma: float = 0.0
    region: str = "all"
    h_quantile: float = 0.5
    j_quantile: float = 0.8
    jsd_topk: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        t = "distill.tip."
        if not 0 < self.ratio <= 1:
            raise ValueError(f"algo.{t}ratio must be in (0, 1], got {self.ratio}")
        _choice(t + "region", self.region, ("all", "q3"))
        for key in ("h_quantile", "j_quantile"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"algo.{t}{key} must be in [0, 1], got {getattr(self, key)}")
        _at_least(t + "jsd_topk", self.jsd_topk, 0)
        if not self.scale > 0:
            raise ValueError(f"algo.{t}scale must be > 0, got {self.scale}")


@dataclass(kw_only=True)
class ExposureCfg:
    """ATESD's exposure controller (context "exposure_prefix"; spec section 7).

    Attributes:
        window, update_every, discount, lr, hidden, progress: rho ~ Beta(a, b), (a, b) = softplus(MLP(state)) + 1,
            held for `window` steps; REINFORCE every `update_every` steps on the discounted learning progress of
            each held decision ("accuracy": the change of rollout accuracy between windows; "neg_loss": the decrease
            of the distillation loss); Adam at `lr`, an MLP of `hidden` units.
    """

    window: int = 10
    update_every: int = 30
    discount: float = 0.9
    lr: float = 0.01
    hidden: int = 16
    progress: str = "accuracy"

    def __post_init__(self) -> None:
        e = "distill.exposure."
        for key in ("window", "update_every", "hidden"):
            _at_least(e + key, getattr(self, key), 1)
        if self.update_every <= self.window:
            raise ValueError(
                "algo.distill.exposure.update_every must exceed exposure.window (a decision's progress is measured in "
                f"the windows after it), got {self.update_every} <= {self.window}"
            )
        if not 0 <= self.discount <= 1:
            raise ValueError(f"algo.{e}discount must be in [0, 1], got {self.discount}")
        if not self.lr > 0:
            raise ValueError(f"algo.{e}lr must be > 0, got {self.lr}")
        _choice(e + "progress", self.progress, ("accuracy", "neg_loss"))


@dataclass(kw_only=True)
class PartialCfg:
    """PAINT's partial reference (context "partial_solution"; spec section 15 and its 2026-12 box).

    Attributes:
        reveal_min, reveal_direction, overlap: reveal rho = clip(reveal_min + (1 - reveal_min) x) of the reference,
            x = 1 - o ("more_when_far": more to a rollout far from the reference) or o ("more_when_close"),
            o = overlap(rollout, reference): "anchor_recall" (the fraction of the reference's anchors, its last boxed
            answer, formulas and numbers, found in the rollout) | "lcs_recall" | "unigram_recall" | "bigram_recall"
            (on token ids).
        unit: cut the reference by "tokens" or "lines".
        hidden_marker: append a line saying the rest is hidden.
    """

    reveal_min: float = 0.25
    reveal_direction: str = "more_when_far"
    overlap: str = "anchor_recall"
    unit: str = "tokens"
    hidden_marker: bool = False

    def __post_init__(self) -> None:
        r = "distill.partial."
        if not 0 <= self.reveal_min <= 1:
            raise ValueError(f"algo.{r}reveal_min must be in [0, 1], got {self.reveal_min}")
        _choice(r + "reveal_direction", self.reveal_direction, ("more_when_close", "more_when_far"))
        _choice(r + "overlap", self.overlap, OVERLAPS)
        _choice(r + "unit", self.unit, ("tokens", "lines"))


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
            reference cut according to rollout-reference overlap), "exposure_prefix" (ATESD: the first
            ceil(rho |s*|) reference tokens, rho from a Beta-policy controller), "successful_sibling" (SDPO / SRPO:
            the first correct completion of the group other than the sample itself), "reviser" (SD-Zero: the
            student's own attempt and its binary verdict, spec section 5's reviser prompt), "concise_instruction"
            (OPSDC: the problem inside spec section 10's "solve concisely" instruction; no privileged text).
        wrapper: teacher message around the privileged text: "opsd" (OPSD's template of the 2026-03 snapshot, the
            one the tiny model is warm-started on) | "opsd_v3" (OPSD's current data_collator.py wording: the
            solution between "=== Reference Solution Begin/End ===" and the "do not copy or paraphrase it" guard,
            spec section 2's box) | "sdpo" (SDPO's
            middle text around the bare problem, the student's instruction last) | "sdpo_exact" (SDPO's reprompt
            verbatim: "{student's user message}\nCorrect solution:\n\n{text}\n\nCorrectly solve the original
            question."). Contexts "reviser" and "concise_instruction" have their own fixed messages.
        witness_thinking: "keep" the witness's <think> part or "strip" it (SDPO strips).
        teacher_thinking: the chat template's thinking switch for the teacher context; null = as the student (a
            model without thinking, model.enable_thinking false, ignores both switches).
            OPSD-v3: a non-thinking student (algo.student_thinking false) scored by a thinking teacher.
        think_boundary: "none" | "open_think": when the teacher thinks and the student does not, append "<think>\n"
            to the teacher context, so the student's answer tokens are scored as the start of the teacher's thinking
            rather than at a position where the teacher expects "<think>" (OPSD issue #10, the author's suggestion).
        teacher: weights of the teacher: "current" (the policy, no grad; no second copy), "initial" (a frozen
            copy of the starting weights), "ema" (theta_T <- (1-ema_rate) theta_T + ema_rate theta after each
            optimiser step), "periodic" (copied from the policy every update_every optimiser steps).
        select: which tokens get the loss: "all" completions, "longest_wrong" (SSOPD: prefixes of the longest
            wrong completion of each mixed group), "entropy_mismatch" (only PAINT's sparse positions),
            "failed_only" (SRPO: only wrong completions), "tip" (TIP: positions sampled without replacement with
            probability prop. to h^tip_alpha j^tip_gamma, see the tip_* keys).
        rl_on_distilled: a completion that gets a distillation target keeps its RL (policy-gradient) term (SSOPD's
            auxiliary loss); false routes it to the distillation term only (SRPO). Completions without a teacher
            always keep their RL term.
        prefix: for longest_wrong: "all" positions | "cap" (first prefix_cap) | "witness" (first len(witness)).
        exclude_truncated_wrong: a wrong completion that hit max_new_tokens may not be the longest wrong one.
        num_wrong: "one" (the longest wrong, the literal rule) | "all" wrong completions of a mixed group.
        length_unit: "tokens" | "chars" for shortest / longest.
        divergence: "fkl" KL(T||S) | "rkl" KL(S||T) | "jsd" (generalised JSD(beta); beta 0 -> fkl, 1 -> rkl) |
            "sg_topk_rkl" (the Many-Faces stop-gradient top-k reverse KL sum_{v in K} sg(S (log S - log T)) log S,
            K = the student's ("student_topk") or the teacher's ("teacher_topk") top `topk`, full-vocab S and T).
        divergence_after, divergence_switch_frac: a two-stage schedule (Paced): `divergence` until
            ceil(switch_frac x num_steps) steps are done, then `divergence_after` (null = no switch).
        support: "full" vocabulary (chunked) | "teacher_topk" (renormalised) | "student_topk_tail" (+ tail bucket) |
            "student_topk" (sg_topk_rkl only).
        sampled_token: the single-sample reverse-KL estimator -sg(log T(y) - log S(y)) log S(y) (needs rkl).
        clip_max: the clip threshold c; null = off.
        clip_mode: "token" = min(D_t, c) (the spec's PW-OPSD reading) | "element" = OPSD-v3's `--jsd_token_clip`:
            every (position, vocabulary entry) contribution clamped to <= c before the vocabulary sum (fkl / rkl /
            jsd on any support; the clipped loss can be negative).
        is_clip: multiply D_t by sg(min(pi/pi_old, is_clip)) (SDPO, 2.0); null = off.
        loss_temperature: divides both logits in the loss; null = the rollout temperature.
        prompt_weight: "frontier" 4 p(1-p) | "indicator" 1[0<p<1] | "beta" p^a (1-p)^b | "sqrt" | "none".
        prompt_weight_a, prompt_weight_b: exponents of "beta".
        prompt_weight_norm: "none" | "batch_mean" (Paced: divide by the batch mean of w, i.e. the loss is
            sum_x w(x) L(x) / sum_x w(x); prompts with w = 0 add nothing).
        normalize: "prompt_mean" (mean over a prompt's selected tokens, then over prompts with a target; SSOPD)
            | "token_mean" (over all selected tokens of the batch; OPSD's batchmean).
        token_weight: "none" | "teacher_entropy" (SRPO: w_t = exp(-H(T_t) / token_weight_tau), H on the
            divergence's support, normalised to mean 1 over the distilled tokens of the optimiser step's batch).
        tip: TIP's token sampling (`TipCfg`, keys algo.distill.tip.*), used by select "tip".
        exposure: ATESD's exposure controller (`ExposureCfg`, algo.distill.exposure.*), context "exposure_prefix".
        partial: PAINT's partial reference (`PartialCfg`, algo.distill.partial.*), context "partial_solution".
        interp_gamma: PAINT's energy-space interpolation z* = (1-gamma) z_T + gamma sg(z_P) at the entropy-mismatch
            positions (0 = off).
        interp_partner: z_P: "student" (the student's logits) | "full_solution_teacher" (the teacher's logits under
            the full reference, a second teacher pass; rows whose context is already the full reference use z_T).
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
    teacher_thinking: bool | None = None
    think_boundary: str = "none"
    teacher: str = "current"
    ema_rate: float = 0.05
    update_every: int = 50
    select: str = "all"
    rl_on_distilled: bool = True
    prefix: str = "all"
    prefix_cap: int | None = None
    exclude_truncated_wrong: bool = False
    num_wrong: str = "one"
    length_unit: str = "tokens"
    divergence: str = "jsd"
    beta: float = 0.5
    divergence_after: str | None = None
    divergence_switch_frac: float = 0.5
    support: str = "full"
    topk: int = 50
    sampled_token: bool = False
    clip_max: float | None = None
    clip_mode: str = "token"
    is_clip: float | None = None
    loss_temperature: float | None = None
    prompt_weight: str = "none"
    prompt_weight_a: float = 1.0
    prompt_weight_b: float = 1.0
    prompt_weight_norm: str = "none"
    normalize: str = "token_mean"
    token_weight: str = "none"
    token_weight_tau: float = 1.0
    tip: TipCfg = field(default_factory=TipCfg)
    exposure: ExposureCfg = field(default_factory=ExposureCfg)
    partial: PartialCfg = field(default_factory=PartialCfg)
    interp_gamma: float = 0.0
    interp_partner: str = "full_solution_teacher"
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
        _choice(d + "wrapper", self.wrapper, WRAPPERS)
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
        if self.divergence_after is not None:
            _choice(d + "divergence_after", self.divergence_after, DIVERGENCE_KINDS[:3])
            if self.divergence == "sg_topk_rkl":
                raise ValueError("algo.distill.divergence_after switches between fkl / rkl / jsd, not sg_topk_rkl")
        if not 0 < self.divergence_switch_frac <= 1:
            raise ValueError(
                f"algo.distill.divergence_switch_frac must be in (0, 1], got {self.divergence_switch_frac}"
            )
        _choice(d + "support", self.support, SUPPORTS)
        sg_ok = self.support in ("student_topk", "teacher_topk")
        if (self.divergence == "sg_topk_rkl" and not sg_ok) or (
            self.support == "student_topk" and self.divergence != "sg_topk_rkl"
        ):
            raise ValueError(
                "algo.distill.divergence=sg_topk_rkl takes its index set from support=student_topk or teacher_topk, "
                f"and support=student_topk serves only sg_topk_rkl (got divergence={self.divergence}, "
                f"support={self.support})"
            )
        _at_least(d + "topk", self.topk, 1)
        if self.sampled_token and not (self.divergence == "rkl" or (self.divergence == "jsd" and self.beta == 1)):
            raise ValueError(
                "algo.distill.sampled_token estimates the reverse KL only: set algo.distill.divergence=rkl "
                f"(got divergence={self.divergence}, beta={self.beta})"
            )
        if self.sampled_token and self.divergence_after is not None:
            raise ValueError("algo.distill.sampled_token cannot follow a divergence schedule (divergence_after)")
        for key in ("clip_max", "is_clip", "loss_temperature"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ValueError(f"algo.distill.{key} must be > 0 or null (off), got {v}")
        _choice(d + "prompt_weight", self.prompt_weight, PROMPT_WEIGHT_KINDS)
        _choice(d + "prompt_weight_norm", self.prompt_weight_norm, ("none", "batch_mean"))
        _choice(d + "normalize", self.normalize, DISTILL_NORMS)
        _choice(d + "token_weight", self.token_weight, TOKEN_WEIGHTS)
        if not self.token_weight_tau > 0:
            raise ValueError(f"algo.distill.token_weight_tau must be > 0, got {self.token_weight_tau}")
        sparse = TOKEN_SELECTIONS[self.select].prepass is not None  # TIP: a pre-pass keeps some positions
        if sparse and self.token_weight != "none":
            raise ValueError(
                f"algo.distill.select={self.select} weights its kept tokens itself: set algo.distill.token_weight=none"
            )
        if sparse and self.interp_gamma > 0:
            raise ValueError(
                f"algo.distill.select={self.select} does not combine with PAINT's interpolation (interp_gamma > 0)"
            )
        _choice(d + "interp_partner", self.interp_partner, INTERP_PARTNERS)
        _choice(d + "think_boundary", self.think_boundary, THINK_BOUNDARIES)
        _choice(d + "clip_mode", self.clip_mode, CLIP_MODES)
        if (
            self.clip_mode == "element"
            and self.clip_max is not None
            and (self.sampled_token or self.divergence == "sg_topk_rkl")
        ):
            raise ValueError(
                "algo.distill.clip_mode=element clamps the per-vocabulary-entry terms of fkl / rkl / jsd: it does not "
                "apply to sampled_token or sg_topk_rkl (use clip_mode=token)"
            )
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
