"""The self-distillation term and its data hook on crafted groups and hand-computed logits."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.algos import get_algo
from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch, TeacherContext
from sposd.algos.config import AlgoCfg, DistillCfg, TipCfg
from sposd.algos.distill import METRIC_KEYS, DistillTerm, distill_requests
from sposd.algos.grpo import PolicyGradientTerm
from sposd.ops.divergence import per_token_divergence
from sposd.ops.teacher_signal import teacher_support_entropy
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
    assert set(out.metrics) == set(METRIC_KEYS)


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
    cfg = DistillCfg(**{**OPSD, "interp_gamma": 0.5, "mismatch_q": 0.3, "interp_partner": "student"})
    out = DistillTerm(cfg)(_batch(student, teacher, lengths=[3], weights=[1.0]), Normalizer(1, 1, 1, 3.0))
    # ceil(.3 * 3) = 1 position: #1, z* = .5 * 0 + .5 * [9, 0, 0]
    torch.testing.assert_close(teacher[0, 1], torch.tensor([4.5, 0.0, 0.0]))
    torch.testing.assert_close(teacher[0, [0, 2]], t_before[0, [0, 2]])
    assert float(out.metrics["distill/interp_tokens"]) == 1


def test_paint_interpolates_with_the_full_solution_teacher():
    # the same mismatch position #1; the partner is the full-solution teacher's logits [2, 4, 0] there:
    # z* = .5 * [0, 0, 0] + .5 * [2, 4, 0] = [1, 2, 0]; the student's logits play no part
    student = torch.tensor([[[0.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    teacher = torch.zeros(1, 3, 3)
    partner = torch.tensor([[[5.0, 5.0, 5.0], [2.0, 4.0, 0.0], [5.0, 5.0, 5.0]]])
    cfg = DistillCfg(**{**OPSD, "interp_gamma": 0.5, "mismatch_q": 0.3})
    assert cfg.interp_partner == "full_solution_teacher"  # the default (spec section 15 box)
    db = _batch(student, teacher, lengths=[3], weights=[1.0])
    db.distill.partner_logits_DTV = partner
    DistillTerm(cfg)(db, Normalizer(1, 1, 1, 3.0))
    torch.testing.assert_close(teacher[0, 1], torch.tensor([1.0, 2.0, 0.0]))
    torch.testing.assert_close(teacher[0, [0, 2]], torch.zeros(2, 3))


# ---- the rest of the family: contexts, routing, prompt-weight normalisation ---------------------------------
SDPO = dict(
    coef=1.0,
    context="successful_sibling",
    wrapper="sdpo_exact",
    witness_thinking="strip",
    select="all",
    normalize="token_mean",
)


def test_sdpo_demonstration_is_the_first_other_successful_rollout_thinking_stripped():
    g = _group([3, 4, 5, 6], [False, True, False, True])
    for c, text in zip(g.completions, ["w0", "<think>a</think>R1", "w2", "R3"], strict=True):
        c.text = text
    reqs, stats = distill_requests([g], DistillCfg(**SDPO))
    # sample 0 -> #1 (thinking stripped); #1 -> #3 (never itself); #2 -> #1; #3 -> #1
    assert [r.privileged for r in reqs] == ["R1", "R3", "R1", "R1"]
    assert all(r.context.kind == "wrap" for r in reqs) and stats["distill/targets"] == 4
    # a lone correct sample has no demonstration; the wrong ones use it; an all-wrong group gets nothing
    reqs, _ = distill_requests([_group([3, 4], [True, False]), _group([3, 4], [False, False])], DistillCfg(**SDPO))
    assert [r is not None for r in reqs] == [False, True, False, False]


def test_srpo_routes_failed_samples_with_a_sibling_to_distillation_only():
    cfg = AlgoCfg(
        name="srpo",
        loss_agg="token-mean",
        distill=DistillCfg(**{**SDPO, "select": "failed_only", "rl_on_distilled": False}),
    )
    algo = get_algo("srpo")(cfg)
    mixed, all_wrong = _group([3, 4, 5], [True, False, False]), _group([3, 4], [False, False])
    reqs = algo.distill_requests([mixed, all_wrong])
    # correct #0 -> GRPO only (no teacher); wrong #1, #2 -> a teacher (the correct sibling); all-wrong -> none
    assert [r is not None for r in reqs] == [False, True, True, False, False]
    weights = [algo.rl_loss_weight(1.0, distilled=r is not None) for r in reqs]
    assert weights == [1.0, 0.0, 0.0, 1.0, 1.0]  # failed samples without a sibling fall back to GRPO
    keep = get_algo("srpo")(AlgoCfg(name="srpo", distill=DistillCfg(**{**SDPO, "select": "failed_only"})))
    assert keep.rl_loss_weight(1.0, distilled=True) == 1.0  # the flag keeps their GRPO term too


def test_reviser_concise_and_exposure_contexts():
    g = _group([3, 4], [True, False])
    g.completions[1].text = "attempt"
    reqs, _ = distill_requests([g], DistillCfg(coef=1.0, context="reviser"))
    assert reqs[1].context == TeacherContext("reviser", "attempt", verdict=False) and reqs[0].context.verdict is True
    reqs, _ = distill_requests([g], DistillCfg(coef=1.0, context="concise_instruction"))
    assert [r.context.kind for r in reqs] == ["concise", "concise"]
    seen = []
    cut = lambda ids, sol, rho=None: seen.append((sol, rho)) or sol[:1]  # noqa: E731
    reqs, _ = distill_requests(
        [g], DistillCfg(coef=1.0, context="exposure_prefix"), cut_reference=cut, exposure_ratio=0.3
    )
    assert seen == [("REF", 0.3)] * 2 and reqs[0].privileged == "R"
    _, stats = distill_requests(
        [_group([3], [False], solution=None)],
        DistillCfg(coef=1.0, context="exposure_prefix"),
        cut_reference=cut,
        exposure_ratio=0.3,
    )
    assert stats["distill/missing_solution"] == 1


def test_paced_prompt_weights_normalised_by_their_batch_mean():
    # p = 1/4 -> w = p (1 - p) = 3/16; p = 1/2 -> 1/4; p = 0 and p = 1 -> 0 (no teacher)
    cfg = DistillCfg(
        coef=1.0,
        context="reference_solution",
        prompt_weight="beta",
        prompt_weight_norm="batch_mean",
        normalize="prompt_mean",
    )
    groups = [
        _group([2, 2, 2, 2], [True, False, False, False]),
        _group([2, 2], [True, False]),
        _group([2, 2], [False, False]),
        _group([2, 2], [True, True]),
    ]
    reqs, stats = distill_requests(groups, cfg)
    assert [r is not None for r in reqs] == [True] * 6 + [False] * 4
    # per token: w / (tokens of the prompt); units: w split over the prompt's targets (sum_x w L / sum_x w)
    assert [r.weight for r in reqs[:4]] == pytest.approx([3 / 16 / 8] * 4)
    assert [r.units for r in reqs[:4]] == pytest.approx([3 / 16 / 4] * 4)
    assert [r.units for r in reqs[4:6]] == pytest.approx([1 / 8, 1 / 8])
    assert stats["distill/prompt_weight_sum"] == pytest.approx(3 / 16 + 1 / 4)
    # the loss: with every prompt's token-mean divergence L_x, sum_rows weight * sum_t D / sum units
    #   = (3/16 L_1 + 1/4 L_2) / (3/16 + 1/4): the batch-mean-normalised weighted mean
    units = sum(r.units for r in reqs if r is not None)
    assert units == pytest.approx(3 / 16 + 1 / 4)


def test_divergence_schedule_switches_at_half_of_training():
    term = DistillTerm(DistillCfg(**{**OPSD, "divergence": "fkl", "divergence_after": "rkl"}))
    stages = [(term.begin_step(s, 10)["distill/divergence_stage"], term.divergence) for s in (1, 5, 6, 10)]
    assert stages == [(1.0, "fkl"), (1.0, "fkl"), (2.0, "rkl"), (2.0, "rkl")]


def test_token_weights_multiply_the_per_token_divergence():
    # fkl .25 ln2 at every position; token weights [2, 0, 1] -> (2 + 0 + 1) .25 ln2 / units 3
    student, teacher = S3.repeat(1, 3, 1), T3.repeat(1, 3, 1)
    mb = _batch(student, teacher, lengths=[3], weights=[1.0])
    mb.distill.token_weight_DT = torch.tensor([[2.0, 0.0, 1.0]])
    out = DistillTerm(DistillCfg(**{**OPSD, "divergence": "fkl"}))(mb, Normalizer(1, 1, 1, distill_units=3.0))
    torch.testing.assert_close(out.loss, torch.tensor(0.25 * math.log(2)))


def test_sg_topk_in_the_term():
    # S = [.5, .3, .2], T = [.2, .3, .5], K = student top 2: L = .5 ln 2.5 ln .5 per position
    student = torch.tensor([0.5, 0.3, 0.2]).log().repeat(1, 2, 1)
    teacher = torch.tensor([0.2, 0.3, 0.5]).log().repeat(1, 2, 1)
    cfg = DistillCfg(**{**OPSD, "divergence": "sg_topk_rkl", "support": "student_topk", "topk": 2})
    out = DistillTerm(cfg)(_batch(student, teacher, lengths=[2], weights=[1.0]), Normalizer(1, 1, 1, 2.0))
    torch.testing.assert_close(out.loss, torch.tensor(0.5 * math.log(2.5) * math.log(0.5)))
    # the metric is the truncated reverse KL: .5 ln 2.5 per position
    torch.testing.assert_close(out.metrics["distill/div_sum"], torch.tensor(2 * 0.5 * math.log(2.5)))


# ---- TIP: selection over the batch, loss on the kept positions only -----------------------------------------
TIP = dict(coef=1.0, context="reference_solution", select="tip", divergence="rkl", normalize="token_mean")


def _tip_batch(D=2, T=6, V=9, seed=0, lengths=(6, 4)):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(D, T, V, generator=g, dtype=torch.float64)
    teacher = torch.randn(D, T, V, generator=g, dtype=torch.float64)
    return student, teacher, torch.tensor(lengths)


def test_tip_token_weights_keep_floor_ratio_n_and_have_mean_one():
    student, teacher, lengths = _tip_batch()
    mb = _batch(student, teacher, lengths=lengths.tolist(), weights=[1.0, 1.0])
    term = DistillTerm(DistillCfg(**TIP, tip=TipCfg(ratio=0.5)))
    stats = term.token_stats(mb.distill)
    assert [s.shape for s in stats] == [(6, 2), (4, 2)]
    w = term.token_weights(stats, [stats])
    flat = torch.cat(w)
    # N = 10 positions, k = 5 kept, each weighted N / k = 2: mean 1 over the batch
    assert int((flat > 0).sum()) == 5 and set(flat.tolist()) == {0.0, 2.0} and float(flat.mean()) == 1.0
    # two "ranks": thresholds / counts over both; each rank draws its own floor(ratio n_r)
    w2 = term.token_weights(stats[:1], [stats[:1], stats[1:]])
    assert int((w2[0] > 0).sum()) == 3 and w2[0].max() == pytest.approx(10 / 5)  # k_all = 3 + 2
    assert term.token_weights([], [[], stats]) == []  # a rank without distilled rows


def test_tip_q3_region_draws_only_low_entropy_high_divergence_positions():
    student, teacher, lengths = _tip_batch(seed=1)
    mb = _batch(student, teacher, lengths=lengths.tolist(), weights=[1.0, 1.0])
    term = DistillTerm(DistillCfg(**TIP, tip=TipCfg(ratio=1.0, region="q3")))
    stats = term.token_stats(mb.distill)
    flat = torch.cat(stats)
    h_max, j_min = float(torch.quantile(flat[:, 0].double(), 0.5)), float(torch.quantile(flat[:, 1].double(), 0.8))
    q3 = (flat[:, 0] < h_max) & (flat[:, 1] > j_min)
    kept = torch.cat(term.token_weights(stats, [stats])) > 0
    assert torch.equal(kept, q3) and 0 < int(q3.sum()) < flat.shape[0]


def test_tip_loss_on_kept_positions_equals_the_masked_dense_loss_with_gradient_only_there():
    student, teacher, lengths = _tip_batch(seed=2)
    w_DT = torch.zeros(2, 6, dtype=torch.float64)
    w_DT[0, [1, 4]] = 2.5
    w_DT[1, [0]] = 2.5
    s1 = student.clone().requires_grad_()
    mb = _batch(s1, teacher, lengths=lengths.tolist(), weights=[1.0, 0.5])
    mb.distill.token_weight_DT = w_DT
    norm = Normalizer(1, 1, 1, distill_units=10.0)
    out = DistillTerm(DistillCfg(**TIP))(mb, norm)
    # reference: the dense per-token reverse KL, weighted by row weight x token weight, / units
    s2 = student.clone().requires_grad_()
    D_BT = per_token_divergence(s2, teacher, kind="rkl")
    ref = (D_BT * w_DT * torch.tensor([[1.0], [0.5]], dtype=torch.float64)).sum() / 10.0
    torch.testing.assert_close(out.loss, ref.float())
    assert float(out.metrics["distill/tokens"]) == 3 and float(out.metrics["distill/positions"]) == 10
    out.loss.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    kept = w_DT > 0
    assert s1.grad[~kept].abs().max() == 0 and s1.grad[kept].abs().min() > 0


def test_tip_on_hidden_states_and_head_equals_dense_logits():
    # the learner's form: HiddenLogits computes head(hidden) at the kept positions only; same loss, same gradient
    from sposd.ops.fused import HiddenLogits

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(5, 9, bias=False).double()
    teacher = torch.randn(2, 6, 9, generator=g, dtype=torch.float64)
    w_DT = torch.zeros(2, 6, dtype=torch.float64)
    w_DT[0, [0, 5]] = 1.0
    w_DT[1, 2] = 1.0
    norm = Normalizer(1, 1, 1, distill_units=3.0)
    term = DistillTerm(DistillCfg(**TIP))
    dense = _batch(head(hidden), teacher, lengths=[6, 4], weights=[1.0, 1.0])
    dense.distill.token_weight_DT = w_DT
    (gd,) = torch.autograd.grad(term(dense, norm).loss, head.weight)
    sparse = _batch(torch.zeros(2, 6, 9), teacher, lengths=[6, 4], weights=[1.0, 1.0])
    db = sparse.distill
    db.student_logits_DTV, db.token_weight_DT = HiddenLogits(hidden, head.weight, None), w_DT
    out = term(sparse, norm)
    (gs,) = torch.autograd.grad(out.loss, head.weight)
    torch.testing.assert_close(gs, gd)


def test_teacher_entropy_weights_are_normalised_over_every_rank():
    cfg = DistillCfg(**{**SDPO, "token_weight": "teacher_entropy", "support": "student_topk_tail", "topk": 3})
    term = DistillTerm(cfg)
    assert term.needs_token_prepass and not term.sparse
    student, teacher, lengths = _tip_batch(seed=4)
    stats = term.token_stats(_batch(student, teacher, lengths=lengths.tolist(), weights=[1.0, 1.0]).distill)
    H = teacher_support_entropy(student, teacher, support="student_topk_tail", topk=3, lengths_B=lengths)
    torch.testing.assert_close(stats[0][:, 0], H[0].float())
    torch.testing.assert_close(stats[1][:, 0], H[1, :4].float())
    other = [torch.zeros(5, 1)]  # another rank's tokens with H = 0 (weight exp(0) = 1)
    w = term.token_weights(stats, [stats, other])
    raw = torch.exp(-torch.cat(stats)[:, 0])
    mean = float(torch.cat([raw, torch.ones(5)]).mean())
    torch.testing.assert_close(torch.cat(w), raw / mean)
    assert float(torch.cat([torch.cat(w), torch.ones(5) / mean]).mean()) == pytest.approx(1.0)
