"""The self-distillation term and its data hook on crafted groups and hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.algos import get_algo
from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch
from sposd.algos.config import AlgoCfg, DistillCfg
from sposd.algos.distill import DistillTerm, distill_requests
from sposd.algos.grpo import PolicyGradientTerm
from sposd.types import Completion, Prompt, RolloutGroup

SSOPD = dict(
    coef=1.0, context="shortest_correct", select="longest_wrong", prompt_weight="frontier", normalize="prompt_mean"
)
OPSD = dict(coef=1.0, context="reference_solution", select="all", normalize="token_mean", teacher="initial")


def _group(lengths, correct, truncated=None, solution="REF"):
    truncated = truncated or [False] * len(lengths)
    comps = [
        Completion(token_ids=list(range(n)), text=f"c{i}", finish_reason="length" if t else "stop", correct=ok)
        for i, (n, ok, t) in enumerate(zip(lengths, correct, truncated, strict=True))
    ]
    return RolloutGroup(Prompt(id="p", problem="P", prompt_ids=[1], answer="1", solution=solution), comps)


# ---- data hook ------------------------------------------------------------------------------------------
def test_ssopd_picks_shortest_correct_and_longest_wrong_with_frontier_weight():
    # lengths 5 3 7 7 2, correct T T F F F: witness = #1 (3 tokens); longest wrong = #2 (7, tie with #3 ->
    # lowest index). p = 2/5 -> frontier 4 * .4 * .6 = 0.96; prompt_mean: weight 0.96 / 7 per token, 1 unit.
    g = _group([5, 3, 7, 7, 2], [True, True, False, False, False])
    reqs, stats = distill_requests([g], DistillCfg(**SSOPD))
    assert [r is not None for r in reqs] == [False, False, True, False, False]
    r = reqs[2]
    assert (r.privileged, r.num_positions, r.units) == ("c1", 7, 1.0)
    assert r.weight == pytest.approx(0.96 / 7)
    assert stats["distill/targets"] == 1 and stats["distill/prompt_weight_sum"] == pytest.approx(0.96)


def test_ssopd_all_correct_and_all_wrong_groups_get_no_teacher():
    groups = [_group([4, 5], [True, True]), _group([4, 5], [False, False])]
    reqs, stats = distill_requests(groups, DistillCfg(**SSOPD))
    assert reqs == [None] * 4 and stats["distill/targets"] == 0 and stats["distill/groups"] == 0


def test_ssopd_truncated_wrong_excluded_on_request():
    # #2 is the longest wrong but truncated: excluded -> #1 (4 tokens) is the target
    g = _group([3, 4, 9], [True, False, False], truncated=[False, False, True])
    assert distill_requests([g], DistillCfg(**SSOPD))[0][2] is not None
    reqs, _ = distill_requests([g], DistillCfg(**SSOPD, exclude_truncated_wrong=True))
    assert [r is not None for r in reqs] == [False, True, False]
    # single correct, the only wrong one truncated and excluded -> nothing
    g2 = _group([3, 9], [True, False], truncated=[False, True])
    assert distill_requests([g2], DistillCfg(**SSOPD, exclude_truncated_wrong=True))[0] == [None, None]


def test_ssopd_prefix_modes_and_all_wrong():
    g = _group([5, 3, 7, 6], [True, True, False, False])
    # prefix up to the witness length (3 tokens): weight 4*.5*.5 / 3 = 1/3
    r = distill_requests([g], DistillCfg(**SSOPD, prefix="witness"))[0][2]
    assert (r.num_positions, r.weight) == (3, pytest.approx(1 / 3))
    r = distill_requests([g], DistillCfg(**SSOPD, prefix="cap", prefix_cap=2))[0][2]
    assert r.num_positions == 2
    # every wrong completion: 7 + 6 = 13 selected tokens share the prompt's weight; 2 targets share 1 unit
    reqs, _ = distill_requests([g], DistillCfg(**SSOPD, num_wrong="all"))
    assert [r.weight for r in reqs[2:]] == pytest.approx([1 / 13, 1 / 13])
    assert [r.units for r in reqs[2:]] == [0.5, 0.5]


def test_opsd_every_completion_token_mean_and_missing_solution():
    g1, g2 = _group([4], [False]), _group([6], [True], solution=None)
    reqs, stats = distill_requests([g1, g2], DistillCfg(**OPSD))
    # token_mean: weight 1 (prompt weight none), units = tokens
    assert (reqs[0].privileged, reqs[0].weight, reqs[0].units) == ("REF", 1.0, 4.0)
    assert reqs[1] is None and stats["distill/missing_solution"] == 1


def test_entropy_mismatch_selection_counts_ceil_q_n():
    g = _group([25], [False])
    r = distill_requests([g], DistillCfg(**{**OPSD, "select": "entropy_mismatch", "mismatch_q": 0.1}))[0][0]
    assert (r.num_positions, r.units) == (25, 3.0)  # ceil(0.1 * 25) = 3


def test_partial_solution_uses_cut_reference():
    g = _group([4], [False])
    seen = []

    def cut(ids, sol):
        seen.append((ids, sol))
        return sol[:1]

    r = distill_requests([g], DistillCfg(**{**OPSD, "context": "partial_solution"}), cut_reference=cut)[0][0]
    assert r.privileged == "R" and seen == [([0, 1, 2, 3], "REF")]


# ---- composition ------------------------------------------------------------------------------------------
def test_algorithms_are_compositions_of_terms():
    ssopd = get_algo("ssopd")(AlgoCfg(name="ssopd", distill=DistillCfg(**SSOPD)))
    assert [type(t) for t in ssopd.terms] == [PolicyGradientTerm, DistillTerm]
    assert ssopd.teacher_weights == "current" and not ssopd.needs_ref
    opsd = get_algo("opsd")(AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, distill=DistillCfg(**OPSD)))
    assert [type(t) for t in opsd.terms] == [DistillTerm] and opsd.teacher_weights == "initial"
    assert get_algo("grpo")(AlgoCfg()).teacher_weights is None


def test_config_rejects_inconsistent_compositions():
    with pytest.raises(ValueError, match="loss would be empty"):
        AlgoCfg(rl_coef=0.0)
    with pytest.raises(ValueError, match="group_size >= 2"):
        AlgoCfg(group_size=1, distill=DistillCfg(**SSOPD))
    with pytest.raises(ValueError, match="needs a teacher context"):
        DistillCfg(coef=1.0)
    with pytest.raises(ValueError, match="reverse KL"):
        DistillCfg(**OPSD, sampled_token=True)
    with pytest.raises(ValueError, match="prefix_cap"):
        DistillCfg(**SSOPD, prefix="cap")


def test_coef_schedule_is_applied_by_begin_step():
    algo = get_algo("ssopd")(
        AlgoCfg(distill=DistillCfg(**{**SSOPD, "coef_schedule": "linear_decay", "coef_final_ratio": 0.0}))
    )
    assert algo.begin_step(1, 11)["distill/coef"] == pytest.approx(1.0)
    assert algo.begin_step(6, 11)["distill/coef"] == pytest.approx(0.5)
    assert algo.terms[1].coef == pytest.approx(0.5)


# ---- loss term ---------------------------------------------------------------------------------------------
def _batch(student, teacher, *, lengths, weights, logp=None, old=None):
    D, T, _ = student.shape
    logp = torch.zeros(D, T) if logp is None else logp
    return PolicyBatch(
        logp_BT=logp,
        old_logp_BT=torch.zeros(D, T) if old is None else old,
        mask_BT=torch.ones(D, T),
        adv_B=torch.zeros(D),
        distill=DistillBatch(
            student_logits_DTV=student,
            teacher_logits_DTV=teacher,
            tokens_DT=torch.zeros(D, T, dtype=torch.long),
            lengths_D=torch.tensor(lengths),
            weight_D=torch.tensor(weights),
            logp_DT=logp,
            old_logp_DT=torch.zeros(D, T) if old is None else old,
        ),
    )


T3 = torch.tensor([0.5, 0.25, 0.25]).log()
S3 = torch.tensor([0.25, 0.5, 0.25]).log()


def test_term_hand_computed_fkl():
    # KL(T||S) per position = .5 ln(.5/.25) + .25 ln(.25/.5) + .25 ln 1 = .5 ln2 - .25 ln2 = .25 ln2.
    # Row of 3 positions, lengths 2 -> 2 positions count; weight 0.5, units 2, coef 2:
    # loss = 2 * (0.5 * 2 * .25 ln2) / 2 = .25 ln2.
    student = S3.repeat(1, 3, 1).requires_grad_()
    teacher = T3.repeat(1, 3, 1)
    term = DistillTerm(DistillCfg(**{**OPSD, "divergence": "fkl", "coef": 2.0}))
    out = term(_batch(student, teacher, lengths=[2], weights=[0.5]), Normalizer(1, 1, 1, distill_units=2.0))
    torch.testing.assert_close(out.loss, torch.tensor(0.25 * math.log(2)))
    assert float(out.metrics["distill/tokens"]) == 2
    torch.testing.assert_close(out.metrics["loss/distill"], torch.tensor(0.125 * math.log(2)))
    out.loss.backward()
    # d KL(T||S)/dz_S = S - T at counted positions, times coef * weight / units = 2 * .5 / 2 = .5
    torch.testing.assert_close(student.grad[0, 0], 0.5 * (S3.exp() - T3.exp()))
    assert student.grad[0, 2].abs().max() == 0  # beyond the row's length


def test_term_hand_computed_rkl_and_jsd_endpoints():
    # KL(S||T) = .25 ln(.25/.5) + .5 ln(.5/.25) + 0 = .25 ln2 as well (the example is symmetric)
    student, teacher = S3.view(1, 1, 3), T3.view(1, 1, 3)
    for cfg in (dict(divergence="rkl"), dict(divergence="jsd", beta=1.0)):
        out = DistillTerm(DistillCfg(**{**OPSD, **cfg}))(
            _batch(student.clone(), teacher, lengths=[1], weights=[1.0]), Normalizer(1, 1, 1, distill_units=1.0)
        )
        torch.testing.assert_close(out.loss, torch.tensor(0.25 * math.log(2)))


def test_term_without_distill_rows_is_a_connected_zero_with_the_same_metrics():
    logp = torch.randn(2, 3, requires_grad=True)
    mb = PolicyBatch(logp_BT=logp, old_logp_BT=logp.detach(), mask_BT=torch.ones(2, 3), adv_B=torch.zeros(2))
    out = DistillTerm(DistillCfg(**OPSD))(mb, Normalizer(1, 1, 1))
    assert out.loss.item() == 0 and out.loss.requires_grad
    assert set(out.metrics) == {"loss/distill", "distill/tokens", "distill/div_sum", "distill/interp_tokens"}


def test_teacher_never_gets_a_gradient_and_clip_cuts_it():
    student = torch.randn(1, 4, 5, requires_grad=True)
    teacher = torch.randn(1, 4, 5, requires_grad=True)
    out = DistillTerm(DistillCfg(**OPSD))(
        _batch(student, teacher, lengths=[4], weights=[1.0]), Normalizer(1, 1, 1, distill_units=4.0)
    )
    out.loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # a clip below every D_t makes the loss constant: zero gradient
    student.grad = None
    out = DistillTerm(DistillCfg(**OPSD, clip_max=1e-6))(
        _batch(student, teacher.detach(), lengths=[4], weights=[1.0]), Normalizer(1, 1, 1, distill_units=4.0)
    )
    out.loss.backward()
    torch.testing.assert_close(out.loss, torch.tensor(1e-6))
    assert student.grad.abs().max() == 0


def test_is_clip_scales_by_the_detached_capped_ratio():
    # log-ratio ln 3 -> ratio 3 capped at 2: loss doubles (per position, same D everywhere)
    student, teacher = S3.repeat(1, 2, 1), T3.repeat(1, 2, 1)
    logp = torch.full((1, 2), math.log(3.0))
    base = DistillTerm(DistillCfg(**{**OPSD, "divergence": "fkl"}))(
        _batch(student, teacher, lengths=[2], weights=[1.0]), Normalizer(1, 1, 1, distill_units=2.0)
    ).loss
    clipped = DistillTerm(DistillCfg(**{**OPSD, "divergence": "fkl", "is_clip": 2.0}))(
        _batch(student, teacher, lengths=[2], weights=[1.0], logp=logp), Normalizer(1, 1, 1, distill_units=2.0)
    ).loss
    torch.testing.assert_close(clipped, 2 * base)


def test_sampled_token_estimator_gradient():
    # loss_t = -sg(lt - ls) ls; d/dz_S = -(lt - ls) (onehot(y) - S): at the sampled token 0,
    # lt - ls = ln .5 - ln .25 = ln 2 -> grad = -ln2 * ([1,0,0] - S)
    student = S3.view(1, 1, 3).clone().requires_grad_()
    cfg = DistillCfg(**{**OPSD, "divergence": "rkl", "sampled_token": True})
    out = DistillTerm(cfg)(
        _batch(student, T3.view(1, 1, 3), lengths=[1], weights=[1.0]), Normalizer(1, 1, 1, distill_units=1.0)
    )
    out.loss.backward()
    torch.testing.assert_close(student.grad[0, 0], -math.log(2) * (torch.tensor([1.0, 0, 0]) - S3.exp()))


def test_paint_interpolation_moves_the_teacher_only_at_mismatch_positions():
    # position 1 has a uniform (high-entropy) teacher vs a peaked student: the largest |H_T - H_S|.
    student = torch.tensor([[[0.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    t_before = teacher.clone()
    cfg = DistillCfg(**{**OPSD, "interp_gamma": 0.5, "mismatch_q": 0.3})
    out = DistillTerm(cfg)(_batch(student, teacher, lengths=[3], weights=[1.0]), Normalizer(1, 1, 1, 3.0))
    # ceil(.3 * 3) = 1 position: #1, z* = .5 * 0 + .5 * [9, 0, 0]
    torch.testing.assert_close(teacher[0, 1], torch.tensor([4.5, 0.0, 0.0]))
    torch.testing.assert_close(teacher[0, [0, 2]], t_before[0, [0, 2]])
    assert float(out.metrics["distill/interp_tokens"]) == 1
