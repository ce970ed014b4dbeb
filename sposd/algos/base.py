"""The Algorithm interface the loop and learner call, the tensors they pass it, and the name registry.

An Algorithm = group-level data hooks (reward shaping, group filtering, advantages, per-sample loss weights)
+ a loss that is the sum of composable `LossTerm`s. The GRPO family composes the RL base term
(`sposd.algos.grpo.rl_terms`); distillation methods add terms (teacher divergences, token selection, prompt
weights) next to it instead of branching on the algorithm name.

Legend: B rows of a micro-batch, T completion tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sposd.algos.batch import DistillBatch, LossTerm, Normalizer, PolicyBatch, TeacherRequest  # noqa: F401  (re-exported)
from sposd.algos.config import AlgoCfg
from sposd.algos.distill.contexts import CONTEXT_KINDS, TEACHER_CONTEXTS, TeacherContext  # noqa: F401  (re-exported)
from sposd.algos.distill.selections import TOKEN_SELECTIONS
from sposd.ops.advantages import ragged_group_advantages
from sposd.ops.shaping import overlong_penalty
from sposd.ops.types import LossOut
from sposd.types import RolloutGroup


class Algorithm:
    """Base class: data hooks driven by `AlgoCfg`, loss = sum of the terms built by `build_terms`.

    Hooks the loop and learner call, none of which knows an algorithm's name:
        begin_step / end_step     per-step schedules (coefficients, divergence stage, CEPO's lambda) and
                                  controllers (ATESD's exposure), fed the step's metrics
        shape_rewards, filter_groups, advantages, loss_mask_weight, rl_loss_weight
        distill_requests          the distillation teacher context of each completion
        score_requests            the K scoring contexts of each completion (advantage modifiers)
        token_stats / token_weights   the learner's per-token pre-pass (TIP selection, SRPO's entropy weights)
        loss                      the sum of the terms

    Args:
        cfg: the validated algo config.
        rollout_temperature: the loss temperature when distill.loss_temperature is null.
        seed: seeds the algorithm's own randomness (the exposure controller's draws).
    """

    def __init__(self, cfg: AlgoCfg, *, rollout_temperature: float = 1.0, seed: int = 0) -> None:
        self.cfg = cfg
        self.rollout_temperature = rollout_temperature
        self.seed = seed
        self.terms = self.build_terms()
        assert self.terms, f"{type(self).__name__}.build_terms() returned no loss terms"
        self.distill_stats: dict[str, float] = {}
        self.controller = None
        if cfg.distill.enabled and TEACHER_CONTEXTS[cfg.distill.context].uses_controller:  # ATESD
            from sposd.algos.controller import ExposureController

            self.controller = ExposureController(cfg.distill, seed=seed)

    def build_terms(self) -> list[LossTerm]:
        """The loss terms this algorithm sums: the RL base term (rl_coef > 0) and the distillation term."""
        from sposd.algos.distill.term import DistillTerm
        from sposd.algos.grpo import rl_terms

        terms = rl_terms(self.cfg) if self.cfg.rl_coef > 0 else []
        if self.cfg.distill.enabled:
            terms.append(DistillTerm(self.cfg.distill, temperature=self.rollout_temperature))
        return terms

    @property
    def needs_ref(self) -> bool:
        """Whether the learner must supply `PolicyBatch.ref_logp_BT` (a frozen initial-policy copy)."""
        return any(t.needs_ref for t in self.terms)

    @property
    def teacher_weights(self) -> str | None:
        """The teacher's weights ("current" | "initial" | "ema" | "periodic"), None when nothing needs a teacher.

        The distillation term and a scoring advantage modifier share one teacher (the config enforces it).
        """
        if self.cfg.distill.enabled:
            return self.cfg.distill.teacher
        return self.cfg.adv_mod.teacher if self.cfg.adv_mod.scores else None

    @property
    def needs_partner_pass(self) -> bool:
        """Whether the learner runs a second teacher pass on each distilled row's partner context (PAINT's
        full-solution interpolation partner) and hands its logits over as `DistillBatch.partner_logits_DTV`."""
        d = self.cfg.distill
        if not d.enabled or d.interp_gamma <= 0 or d.interp_partner != "full_solution_teacher":
            return False
        return TEACHER_CONTEXTS[d.context].cuts_reference

    @property
    def needs_answer_classes(self) -> bool:
        """Whether the loop must label `Completion.answer_class` (majority voting) before `distill_requests`."""
        d = self.cfg.distill
        return d.enabled and (TOKEN_SELECTIONS[d.select].needs_answer_classes or TEACHER_CONTEXTS[d.context].votes)

    @property
    def teacher_ema_rate(self) -> float:
        return self.cfg.distill.ema_rate

    @property
    def teacher_update_every(self) -> int:
        return self.cfg.distill.update_every

    @property
    def num_score_contexts(self) -> int:
        """K: teacher contexts per completion whose token log-probs the learner computes (0 = none)."""
        return self.cfg.adv_mod.num_contexts

    @property
    def needs_token_prepass(self) -> bool:
        """Whether the learner runs `token_stats` / `token_weights` over the batch before the loss passes."""
        return any(getattr(t, "needs_token_prepass", False) for t in self.terms)

    def _distill_term(self):
        from sposd.algos.distill.term import DistillTerm

        return next(t for t in self.terms if isinstance(t, DistillTerm))

    def token_stats(self, db: DistillBatch) -> list[Tensor]:
        """Pre-pass statistics of each distilled row ([n_i, C] per row, no grad)."""
        return self._distill_term().token_stats(db)

    def token_weights(self, local: list[Tensor], everyone: list[list[Tensor]]) -> list[Tensor]:
        """Per-token weights ([n_i] per local row) from this rank's row statistics and every rank's."""
        return self._distill_term().token_weights(local, everyone)

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called by the loop before each training step (1-based): schedules and controller decisions."""
        out: dict[str, float] = {}
        for term in self.terms:
            if hasattr(term, "begin_step"):
                out.update(term.begin_step(step, total_steps))
        if self.controller is not None:
            out.update(self.controller.begin_step(step, total_steps))
        return out

    def end_step(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Called by the loop after each step with its (rank-global) metrics: controller updates."""
        return self.controller.end_step(step, metrics) if self.controller is not None else {}

    def state_dict(self) -> dict:
        """The algorithm's own trainable state (the exposure controller), for checkpoints."""
        return {"controller": self.controller.state_dict()} if self.controller is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.controller is not None and "controller" in state:
            self.controller.load_state_dict(state["controller"])

    def distill_requests(self, groups: list[RolloutGroup], *, cut_reference=None) -> list[TeacherRequest | None]:
        """Which completions get a teacher, with what context and weight; flat in group order.

        Args:
            groups: verified, reward-shaped groups (the ones that go to the learner).
            cut_reference: (completion_ids, solution, rho=None) -> the reference with its suffix dropped (rho None:
                by rollout-reference overlap, PAINT; else the first ceil(rho n) tokens, ATESD).
        """
        from sposd.algos.distill.requests import distill_requests

        if not self.cfg.distill.enabled:
            self.distill_stats = {}
            return [None] * sum(len(g.completions) for g in groups)
        rho = self.controller.rho if self.controller is not None else None
        reqs, self.distill_stats = distill_requests(
            groups, self.cfg.distill, cut_reference=cut_reference, exposure_ratio=rho
        )
        return reqs

    def score_requests(self, groups: list[RolloutGroup]) -> list[list[TeacherContext] | None]:
        """The `num_score_contexts` teacher contexts of each completion (None: score under the student's own
        prompt), flat in group order; [None] * B when the algorithm scores nothing."""
        from sposd.algos.adv_mod import score_requests

        if not self.cfg.adv_mod.scores:
            return [None] * sum(len(g.completions) for g in groups)
        return score_requests(groups, self.cfg.adv_mod)

    def shape_rewards(self, groups: list[RolloutGroup], *, max_new_tokens: int) -> None:
        """Set each `Completion.reward` in place: 1.0 if correct else 0.0, plus DAPO overlong shaping if on.

        Args:
            groups: verified groups (`Completion.correct` filled in).
            max_new_tokens: the generation budget L_max (overlong_buffer must not exceed it).
        """
        comps = [c for g in groups for c in g.completions]
        rewards = [1.0 if c.correct else 0.0 for c in comps]
        if self.cfg.overlong_buffer > 0 and comps:
            lengths_B = torch.tensor([len(c.token_ids) for c in comps], dtype=torch.float64)
            pen_B = overlong_penalty(
                lengths_B,
                max_len=max_new_tokens,
                cache_len=self.cfg.overlong_buffer,
                factor=self.cfg.overlong_penalty,
            )
            rewards = [r + p for r, p in zip(rewards, pen_B.tolist(), strict=True)]
        for c, r in zip(comps, rewards, strict=True):
            c.reward = r

    def filter_groups(self, groups: list[RolloutGroup]) -> list[RolloutGroup]:
        """DAPO dynamic sampling: keep only groups with mixed correctness (0 < pass rate < 1) when enabled.

        Mixedness is judged on `correct` (verl DAPO `filter_groups.metric=acc`), not on shaped rewards.
        """
        return [g for g in groups if g.is_mixed] if self.cfg.dynamic_sampling else list(groups)

    def advantages(self, groups: list[RolloutGroup]) -> list[float]:
        """Group-relative advantage of every completion, flat in group order, from `Completion.reward`."""
        adv_B = ragged_group_advantages(
            [g.rewards for g in groups], std_normalize=self.cfg.adv_std_norm, eps=self.cfg.adv_eps
        )
        return adv_B.tolist()

    def loss_mask_weight(self, groups: list[RolloutGroup]) -> list[float]:
        """Per-completion loss weight, flat in group order: 0.0 drops truncated ones when mask_truncated."""
        return [0.0 if self.cfg.mask_truncated and c.truncated else 1.0 for g in groups for c in g.completions]

    def rl_loss_weight(self, weight: float, *, distilled: bool) -> float:
        """The RL-term weight of a completion once it is known whether it got a teacher: SRPO's routing sends a
        distilled completion to the distillation term only (distill.rl_on_distilled false)."""
        return 0.0 if distilled and not self.cfg.distill.rl_on_distilled else weight

    def loss(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        """This micro-batch's share of the batch loss (sum of the terms) and their metrics.

        Args:
            mb: the micro-batch tensors.
            norm: global normalisers for the whole optimiser step.
        """
        outs = [term(mb, norm) for term in self.terms]
        metrics: dict[str, Tensor | float] = {}
        for out in outs:
            assert not metrics.keys() & out.metrics.keys(), f"loss terms reuse metric names: {sorted(out.metrics)}"
            metrics.update(out.metrics)
        return LossOut(sum((out.loss for out in outs[1:]), start=outs[0].loss), metrics)


ALGOS: dict[str, type[Algorithm]] = {}


def register_algo(name: str):
    """Class decorator: make an Algorithm subclass `get_algo(name)` (for a method that needs more than the
    components; none of the shipped YAMLs does)."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        if name in ALGOS:
            raise ValueError(f"algo {name!r} already registered by {ALGOS[name].__name__}")
        ALGOS[name] = cls
        return cls

    return deco


def get_algo(name: str) -> type[Algorithm]:
    """The class that runs `algo.name`: a registered subclass, else `Algorithm` itself (every conf/algo/*.yaml is a
    composition of components, and its name is a label)."""
    return ALGOS.get(name, Algorithm)
