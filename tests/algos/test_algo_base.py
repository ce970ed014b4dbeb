import pytest

from sposd.algos import base
from sposd.algos.base import Algorithm, get_algo, register_algo
from sposd.algos.config import AlgoCfg
from sposd.types import Completion, Prompt, RolloutGroup


def _group(correct, lengths=None, finish=None):
    lengths = lengths or [3] * len(correct)
    finish = finish or ["stop"] * len(correct)
    comps = [
        Completion(token_ids=list(range(n)), text="", correct=c, finish_reason=f)
        for c, n, f in zip(correct, lengths, finish, strict=True)
    ]
    return RolloutGroup(prompt=Prompt(id="p", problem="", prompt_ids=[1], answer="1"), completions=comps)


def test_every_name_is_the_composed_algorithm_unless_a_subclass_registers():
    assert {get_algo(n) for n in ("grpo", "dapo", "dr_grpo", "opsd", "uopsd")} == {Algorithm}


def test_duplicate_registration_rejected(monkeypatch):
    class Custom(Algorithm):
        pass

    monkeypatch.setattr(base, "ALGOS", {})
    register_algo("x")(Custom)
    assert get_algo("x") is Custom
    with pytest.raises(ValueError, match="already registered by Custom"):
        register_algo("x")(Algorithm)


def test_base_class_composes_terms_from_config():
    # the base class builds the RL term alone by default; rl_coef 0 without distillation is refused
    assert [type(t).__name__ for t in Algorithm(AlgoCfg()).terms] == ["PolicyGradientTerm"]
    with pytest.raises(ValueError, match="loss would be empty"):
        AlgoCfg(rl_coef=0.0)


def test_shape_rewards_binary_plus_overlong():
    # max_new_tokens 10, overlong_buffer 4 -> free up to 6 tokens, then (6 - L) / 4, -1 at 10
    algo = Algorithm(AlgoCfg(overlong_buffer=4))
    g = _group([True, True, False, False], lengths=[5, 8, 8, 10])
    algo.shape_rewards([g], max_new_tokens=10)
    assert g.rewards == pytest.approx([1.0, 1.0 - 0.5, -0.5, -1.0])


def test_shape_rewards_without_buffer_is_binary():
    g = _group([True, False], lengths=[10, 10])
    Algorithm(AlgoCfg()).shape_rewards([g], max_new_tokens=10)
    assert g.rewards == [1.0, 0.0]


def test_overlong_buffer_larger_than_budget_raises():
    with pytest.raises(ValueError, match="cache_len"):
        Algorithm(AlgoCfg(overlong_buffer=16)).shape_rewards([_group([True])], max_new_tokens=8)


def test_dynamic_sampling_keeps_only_mixed_groups():
    solved, failed, mixed = _group([True, True]), _group([False, False]), _group([True, False])
    groups = [solved, mixed, failed]
    assert Algorithm(AlgoCfg(dynamic_sampling=True)).filter_groups(groups) == [mixed]
    assert Algorithm(AlgoCfg()).filter_groups(groups) == groups


def test_dynamic_sampling_judges_correctness_not_shaped_reward():
    # both correct, one overlong: rewards differ (1.0 vs 0.0) but the group is solved, so it is dropped
    algo = Algorithm(AlgoCfg(dynamic_sampling=True, overlong_buffer=4))
    g = _group([True, True], lengths=[2, 10])
    algo.shape_rewards([g], max_new_tokens=10)
    assert g.rewards == [1.0, 0.0] and algo.filter_groups([g]) == []


def test_advantages_flat_in_group_order():
    # group 1: r = [1, 0] -> mean 0.5, std sqrt(0.5) -> +-0.5 / 0.7071 = +-0.7071; group 2: r = [0, 0, 0] -> 0
    algo = Algorithm(AlgoCfg())
    groups = [_group([True, False]), _group([False, False, False])]
    algo.shape_rewards(groups, max_new_tokens=10)
    assert algo.advantages(groups) == pytest.approx([0.5**0.5, -(0.5**0.5), 0.0, 0.0, 0.0], rel=1e-5)
    dr = Algorithm(AlgoCfg(adv_std_norm=False))
    assert dr.advantages(groups) == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0])


def test_mask_truncated():
    groups = [_group([True, False], finish=["stop", "length"]), _group([False], finish=["length"])]
    assert Algorithm(AlgoCfg(mask_truncated=True)).loss_mask_weight(groups) == [1.0, 0.0, 0.0]
    assert Algorithm(AlgoCfg()).loss_mask_weight(groups) == [1.0, 1.0, 1.0]
