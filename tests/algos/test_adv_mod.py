"""Advantage modifiers as components: CEPO's answer contexts, the modifiers inside the policy-gradient term, the
CEPO lambda schedule, and the composition of CEPO / ACE / G-OPD from config."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.algos import get_algo
from sposd.algos.adv_mod import AceModifier, CepoModifier, GopdModifier, score_requests
from sposd.algos.base import Normalizer, PolicyBatch, TeacherContext
from sposd.algos.config import AdvModCfg, AlgoCfg
from sposd.algos.grpo import PolicyGradientTerm
from sposd.ops.policy_loss import clipped_surrogate
from sposd.types import Completion, Prompt, RolloutGroup


def _group(texts, correct, rewards=None, solution="S"):
    rewards = rewards or [float(c) for c in correct]
    comps = [
        Completion(token_ids=[1, 2], text=x, correct=c, reward=r)
        for x, c, r in zip(texts, correct, rewards, strict=True)
    ]
    return RolloutGroup(Prompt(id="p", problem="P", prompt_ids=[7, 8], answer="4", solution=solution), comps)


# ---- data hook ----------------------------------------------------------------------------------------------
def test_cepo_contexts_gold_and_first_rejected_boxed_answer():
    g = _group(["ok \\boxed{4}", "bad \\boxed{5}", "worse \\boxed{6}"], [True, False, False])
    reqs = score_requests([g], AdvModCfg(kind="cepo"))
    assert len(reqs) == 3 and all(r == reqs[0] for r in reqs)  # one pair per group, for every completion
    assert reqs[0] == [TeacherContext("splice", " 4"), TeacherContext("splice", " 5")]  # first of the rejected


def test_cepo_lowest_reward_rejected_fallback_chars_and_no_rejected():
    # shaped rewards: the rejected rollout with the lowest reward is the negative (here #2, reward -0.5)
    g = _group(["a", "x \\boxed{5}", "y \\boxed{6}"], [True, False, False], rewards=[1.0, 0.0, -0.5])
    assert score_requests([g], AdvModCfg(kind="cepo"))[0][1] == TeacherContext("splice", " 6")
    # no boxed answer: its first cepo_fallback_chars characters
    g = _group(["a", "no answer here at all"], [True, False])
    assert score_requests([g], AdvModCfg(kind="cepo", cepo_fallback_chars=9))[0][1].text == " no answer"
    # no rejected rollout: negative = positive (delta 0: plain GRPO for the group)
    g = _group(["\\boxed{4}", "\\boxed{4}"], [True, True])
    pos, neg = score_requests([g], AdvModCfg(kind="cepo"))[0]
    assert pos == neg == TeacherContext("splice", " 4")


def test_gopd_context_is_the_wrapped_reference_or_none():
    cfg = AdvModCfg(kind="gopd", context="reference_solution", teacher="initial")
    assert score_requests([_group(["a"], [False])], cfg) == [[TeacherContext("wrap", "S")]]
    assert score_requests([_group(["a"], [False], solution=None)], cfg) == [None]


# ---- modifiers inside the policy-gradient term ---------------------------------------------------------------
def _mb(adv, K=0, ref=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = adv.shape[0], 4
    old = -torch.rand(B, T, generator=g)
    logp = (old + 0.05 * torch.randn(B, T, generator=g)).requires_grad_()
    mask = torch.ones(B, T)
    mask[0, 3] = 0.0
    return PolicyBatch(
        logp_BT=logp,
        old_logp_BT=old,
        mask_BT=mask,
        adv_B=adv,
        ref_logp_BT=ref,
        teacher_logp_KBT=-torch.rand(K, B, T, generator=g) if K else None,
    )


def _surrogate(mb, adv, cfg, norm):
    return clipped_surrogate(
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
    ).loss


def test_cepo_term_uses_per_token_advantages():
    cfg = AlgoCfg(clip_high=0.28, loss_agg="token-mean", adv_mod=AdvModCfg(kind="cepo", cepo_lambda=0.5))
    term = PolicyGradientTerm(cfg)
    mb = _mb(torch.tensor([1.0, -1.0]), K=2)
    norm = Normalizer(num_tokens=7.0, num_seqs=2.0, max_len=4)
    out = term(mb, norm)
    pos, neg = mb.teacher_logp_KBT
    expected = torch.zeros(2, 4)
    for i in range(2):  # loop over the public formula
        for t in range(4):
            w = min(max(math.exp(float(mb.adv_B[i]) * float(pos[i, t] - neg[i, t])), 0.8), 1.2)
            expected[i, t] = float(mb.adv_B[i]) * (0.5 + 0.5 * w)
    torch.testing.assert_close(out.loss, _surrogate(mb, expected, cfg, norm))
    assert {"adv_mod/delta_mean", "adv_mod/factor_mean"} <= out.metrics.keys()


def test_ace_term_changes_only_negative_advantages_and_needs_the_reference():
    cfg = AlgoCfg(adv_mod=AdvModCfg(kind="ace", ace_alpha=1.0))
    term = PolicyGradientTerm(cfg)
    assert term.needs_ref and get_algo("ace")(AlgoCfg(name="ace", adv_mod=cfg.adv_mod)).needs_ref
    ref = torch.full((3, 4), -2.0)
    mb = _mb(torch.tensor([1.0, -1.0, 0.0]), ref=ref)
    norm = Normalizer(num_tokens=11.0, num_seqs=3.0, max_len=4)
    out = term(mb, norm)
    c = ((mb.old_logp_BT - ref) * mb.mask_BT).sum(-1)
    expected = torch.tensor([1.0, -1.0 * (1 + math.log1p(math.exp(float(c[1])))), 0.0])
    torch.testing.assert_close(out.loss, _surrogate(mb, expected, cfg, norm))


def test_gopd_term_advantage_arithmetic_ignores_group_advantages():
    cfg = AlgoCfg(
        group_size=1,
        loss_agg="token-mean",
        adv_mod=AdvModCfg(kind="gopd", context="reference_solution", gopd_lambda=1.25),
    )
    term = PolicyGradientTerm(cfg)
    ref = torch.full((2, 4), -1.0)
    mb = _mb(torch.tensor([5.0, -5.0]), K=1, ref=ref)
    norm = Normalizer(num_tokens=7.0, num_seqs=2.0, max_len=4)
    expected = 1.25 * (mb.teacher_logp_KBT[0] - ref) - (mb.old_logp_BT - ref)
    torch.testing.assert_close(term(mb, norm).loss, _surrogate(mb, expected, cfg, norm))


def test_cepo_lambda_decays_linearly_over_the_warmup():
    mod = CepoModifier(AdvModCfg(kind="cepo", cepo_lambda=0.5, cepo_warmup_steps=25))
    lams = [mod.begin_step(s, 100)["adv_mod/lambda"] for s in (1, 2, 13, 26, 27, 100)]
    # lambda_s = max(0, .5 (1 - (s - 1) / 25)): .5, .48, .26, 0, 0, 0
    assert lams == pytest.approx([0.5, 0.48, 0.26, 0.0, 0.0, 0.0])
    const = CepoModifier(AdvModCfg(kind="cepo", cepo_schedule="constant"))
    assert const.begin_step(50, 100)["adv_mod/lambda"] == 0.5


def test_compositions_and_config_errors():
    cepo = get_algo("cepo")(AlgoCfg(name="cepo", adv_mod=AdvModCfg(kind="cepo")))
    assert cepo.num_score_contexts == 2 and cepo.teacher_weights == "current" and not cepo.needs_ref
    assert isinstance(cepo.terms[0].modifier, CepoModifier)
    gopd_cfg = AdvModCfg(kind="gopd", context="reference_solution", teacher="initial")
    gopd = get_algo("gopd")(AlgoCfg(name="gopd", group_size=1, adv_mod=gopd_cfg))
    assert gopd.num_score_contexts == 1 and gopd.teacher_weights == "initial" and gopd.needs_ref
    assert isinstance(gopd.terms[0].modifier, GopdModifier)
    ace = get_algo("ace")(AlgoCfg(name="ace", adv_mod=AdvModCfg(kind="ace")))
    assert (
        ace.num_score_contexts == 0 and ace.teacher_weights is None and isinstance(ace.terms[0].modifier, AceModifier)
    )
    with pytest.raises(ValueError, match="answer_contrast"):
        AdvModCfg(kind="cepo", context="reference_solution")
    with pytest.raises(ValueError, match="reference_solution"):
        AdvModCfg(kind="gopd")
    with pytest.raises(ValueError, match="rl_coef"):
        AlgoCfg(rl_coef=0.0, adv_mod=AdvModCfg(kind="ace"))
