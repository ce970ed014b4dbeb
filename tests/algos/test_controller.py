"""ATESD's exposure controller: draws in [0, 1] held for a window, discounted learning-progress returns,
REINFORCE towards higher reward, plain state_dict round trip."""

from __future__ import annotations

import pytest
import torch

from sposd.algos import get_algo
from sposd.algos.config import AlgoCfg, DistillCfg, ExposureCfg
from sposd.algos.controller import FEATURES, BetaPolicy, ExposureController

ATESD = dict(coef=1.0, context="exposure_prefix", teacher="initial")


def _ctrl(**kw) -> ExposureController:
    return ExposureController(DistillCfg(**ATESD, exposure=ExposureCfg(**kw)), seed=0)


def test_beta_policy_parameters_exceed_one():
    a, b = BetaPolicy(len(FEATURES), 8)(torch.randn(50, len(FEATURES)) * 10)
    assert (a > 1).all() and (b > 1).all()


def test_draws_are_in_the_unit_interval_held_for_a_window_and_reproducible():
    c = _ctrl(window=3, update_every=6)
    rhos = [c.begin_step(s, 12)["exposure/rho"] for s in range(1, 13)]
    assert all(0.0 <= r <= 1.0 for r in rhos)
    assert rhos[0:3] == [rhos[0]] * 3 and rhos[3:6] == [rhos[3]] * 3 and rhos[0] != rhos[3]
    assert len(c.decisions) == 4
    c2 = _ctrl(window=3, update_every=6)
    assert [c2.begin_step(s, 12)["exposure/rho"] for s in range(1, 13)] == rhos  # same seed, same draws
    state = torch.get_rng_state()
    _ctrl().begin_step(1, 10)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched


def test_discounted_learning_progress_returns():
    c = _ctrl(discount=0.5)
    c.decisions = [{"window": w, "state": torch.zeros(len(FEATURES)), "rho": 0.5} for w in range(4)]
    c.window_means = [0.1, 0.3, 0.2, 0.6]
    rets = {d["window"]: g for d, g in c.returns()}
    # G_0 = (.3 - .1) + .5 (.2 - .3) + .25 (.6 - .2) = .2 - .05 + .1 = .25
    # G_1 = (.2 - .3) + .5 (.6 - .2) = .1;  G_2 = .6 - .2 = .4;  window 3 has no window after it yet
    assert rets == pytest.approx({0: 0.25, 1: 0.1, 2: 0.4})


def test_reinforce_moves_the_policy_towards_higher_reward():
    # reward = rho: draws above the policy's mean are rewarded; the mean of Beta(a, b) must rise
    c = _ctrl(lr=0.05)
    state = torch.zeros(len(FEATURES))
    with torch.no_grad():
        a0, b0 = c.policy(state)
    mean0 = float(a0 / (a0 + b0))
    for it in range(30):
        rhos = torch.tensor([c.draw(state, key=1000 * it + k) for k in range(16)])
        c.reinforce(state.expand(16, -1), rhos, rhos, baseline=float(rhos.mean()))
    with torch.no_grad():
        a1, b1 = c.policy(state)
    assert float(a1 / (a1 + b1)) > mean0 + 0.1


def test_end_to_end_windows_update_and_state_dict():
    # accuracy rises in the window after a high rho: the decision's return is positive, the controller learns once
    c = _ctrl(window=2, update_every=4)
    out = {}
    for s in range(1, 5):
        m = c.begin_step(s, 4)
        out = c.end_step(
            s, {"reward/accuracy": 0.2 if s <= 2 else 0.6, "distill/div_mean": 0.3, "actor/grad_norm": 1.0}
        )
        assert m["exposure/rho"] == c.rho
    assert c.window_means == pytest.approx([0.2, 0.6])
    assert out["exposure/decisions"] == 1 and out["exposure/return_mean"] == pytest.approx(0.4)
    assert len(c.decisions) == 1 and c.updates == 1  # window 1's decision waits for a window after it
    state = c.state_dict()
    d = _ctrl(window=2, update_every=4)
    d.load_state_dict(state)
    assert d.rho == c.rho and d.window_means == c.window_means and len(d.decisions) == 1
    for (n1, p1), (_, p2) in zip(c.policy.state_dict().items(), d.policy.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1


def test_algorithm_owns_the_controller_and_passes_rho_to_the_cut():
    cfg = AlgoCfg(name="atesd", group_size=1, rl_coef=0.0, distill=DistillCfg(**ATESD))
    algo = get_algo("atesd")(cfg, seed=3)
    assert algo.controller is not None and "controller" in algo.state_dict()
    m = algo.begin_step(1, 10)
    from sposd.types import Completion, Prompt, RolloutGroup

    g = RolloutGroup(
        Prompt(id="p", problem="P", prompt_ids=[1], answer="1", solution="ABCD"),
        [Completion(token_ids=[5, 6], text="x")],
    )
    seen = []
    algo.distill_requests([g], cut_reference=lambda ids, sol, rho=None: seen.append(rho) or sol[:2])
    assert seen == [m["exposure/rho"]]
    assert (
        get_algo("opsd")(
            AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, distill=DistillCfg(coef=1.0, context="reference_solution"))
        ).controller
        is None
    )
