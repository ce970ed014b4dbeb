"""The RLVR base term (clipped policy gradient + optional k3 KL).

GRPO, DAPO and Dr.GRPO are this term with different `AlgoCfg` values (conf/algo/*.yaml):
- grpo:    adv_std_norm, clip 0.2/0.2, dual clip 3.0, loss_agg seq-mean-token-mean (verl defaults).
- dapo:    clip-higher 0.2/0.28, token-mean, dynamic_sampling, overlong_buffer > 0, kl_coef 0.
- dr_grpo: adv_std_norm false, seq-mean-token-sum-norm (L = loss_scale_len or max_new_tokens).
The policy-gradient term applies the configured advantage modifier (algo.adv_mod: CEPO, ACE, G-OPD) to each
micro-batch. Every other method (conf/algo/*.yaml) adds a distillation term and/or a modifier to it.

Legend: B rows of a micro-batch, T completion tokens.
"""

from __future__ import annotations

from sposd.algos.batch import LossTerm, Normalizer, PolicyBatch
from sposd.algos.config import AlgoCfg
from sposd.ops.aggregation import aggregate
from sposd.ops.policy_loss import clipped_surrogate, kl_penalty_k3
from sposd.ops.types import LossOut


class PolicyGradientTerm:
    """rl_coef x PPO-clip surrogate; metric "loss/pg" is the unweighted surrogate.

    The advantages are the sequence advantages of the data hook, or what the configured advantage modifier makes
    of them on each micro-batch (CEPO / G-OPD: per token; ACE: rescaled negatives).
    """

    def __init__(self, cfg: AlgoCfg) -> None:
        from sposd.algos.adv_mod import make_modifier

        self.cfg = cfg
        self.modifier = make_modifier(cfg.adv_mod)
        self.needs_ref = bool(self.modifier is not None and self.modifier.needs_ref)

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        return self.modifier.begin_step(step, total_steps) if self.modifier is not None else {}

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        cfg = self.cfg
        adv, mod_metrics = (mb.adv_B, {}) if self.modifier is None else self.modifier(mb, norm)
        out = clipped_surrogate(
            mb.logp_BT,
            mb.old_logp_BT,
            adv,
            mb.mask_BT,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            dual_clip_c=cfg.dual_clip_c,
            agg=cfg.loss_agg,
            num_tokens=norm.num_tokens,
            num_seqs=norm.num_seqs,
            max_len=norm.max_len,
        )
        return LossOut(cfg.rl_coef * out.loss, {"loss/pg": out.loss.detach(), **out.metrics, **mod_metrics})


class KLToRefTerm:
    """kl_coef x k3 KL to the initial policy, aggregated like the policy loss (verl `use_kl_loss`)."""

    needs_ref = True

    def __init__(self, cfg: AlgoCfg) -> None:
        self.cfg = cfg

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        assert mb.ref_logp_BT is not None, "KLToRefTerm needs PolicyBatch.ref_logp_BT (algo.needs_ref is True)"
        kl = aggregate(
            kl_penalty_k3(mb.logp_BT, mb.ref_logp_BT),
            mb.mask_BT,
            mode=self.cfg.loss_agg,
            num_tokens=norm.num_tokens,
            num_seqs=norm.num_seqs,
            max_len=norm.max_len,
        )
        return LossOut(self.cfg.kl_coef * kl, {"loss/kl": kl.detach()})


def rl_terms(cfg: AlgoCfg) -> list[LossTerm]:
    """The RLVR base term: clipped policy gradient, plus the KL-to-reference term when kl_coef > 0."""
    return [PolicyGradientTerm(cfg)] + ([KLToRefTerm(cfg)] if cfg.kl_coef > 0 else [])
