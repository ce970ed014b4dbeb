"""Advantage modifiers: CEPO's per-token weights, ACE's asymmetric penalty, G-OPD's advantage (hand-computed,
loop parity against the public formulas, and their gradient through the clipped surrogate)."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.ops.advantage_mods import (
    ace_advantages,
    cepo_token_advantages,
    cepo_token_factors,
    confidence_shift,
    gopd_advantages,
)
from sposd.ops.policy_loss import clipped_surrogate


# ---- CEPO ------------------------------------------------------------------------------------------------
def test_cepo_hand_computed():
    # delta = ln 1.1 on token 0, ln 2 on token 1, 0 on token 2; lam 0.5, eps 0.2
    pos = torch.tensor([[math.log(1.1), math.log(2.0), -1.0]] * 2)
    neg = torch.tensor([[0.0, 0.0, -1.0]] * 2)
    adv = torch.tensor([1.0, -2.0])
    out = cepo_token_advantages(adv, pos, neg, lam=0.5, eps=0.2)
    # A = +1: w = exp(+delta) = [1.1, 2 -> clip 1.2, 1]; factor = .5 + .5 w = [1.05, 1.1, 1.0]
    torch.testing.assert_close(out[0], torch.tensor([1.05, 1.1, 1.0]))
    # A = -2: w = exp(-delta) = [1/1.1 = .90909, .5 -> clip .8, 1]; factor = [.954545, .9, 1.0]; x (-2)
    torch.testing.assert_close(out[1], torch.tensor([-2 * (0.5 + 0.5 / 1.1), -1.8, -2.0]))


def test_cepo_weights_move_the_right_way_for_positive_and_negative_advantages():
    # a token the gold answer makes likelier (delta > 0): reinforced more in a rewarded rollout, penalised less in a
    # failed one; a token the wrong answer explains (delta < 0): the opposite
    pos, neg = torch.tensor([[0.1, -0.1]]), torch.zeros(1, 2)
    up = cepo_token_factors(torch.tensor([1.0]), pos, neg, lam=0.5, eps=0.2)[0]
    down = cepo_token_factors(torch.tensor([-1.0]), pos, neg, lam=0.5, eps=0.2)[0]
    assert up[0] > 1 > up[1] and down[0] < 1 < down[1]
    # lam 0 or A = 0: plain GRPO
    assert torch.equal(cepo_token_factors(torch.tensor([1.0]), pos, neg, lam=0.0, eps=0.2), torch.ones(1, 2))
    assert torch.equal(cepo_token_factors(torch.tensor([0.0]), pos, neg, lam=0.5, eps=0.2), torch.ones(1, 2))


def test_cepo_parity_with_a_loop_over_the_public_formula():
    # apply_cepo_weighting: w = exp(sign(A) * (lp_pos - lp_neg)); w = clamp(w, 1 - eps, 1 + eps);
    # A_t = A * ((1 - lam) + lam * w)
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(5, generator=g)
    pos, neg = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    out = cepo_token_advantages(adv, pos, neg, lam=0.3, eps=0.25)
    for i in range(5):
        s = 1.0 if adv[i] > 0 else (-1.0 if adv[i] < 0 else 0.0)
        for t in range(7):
            w = min(max(math.exp(s * float(pos[i, t] - neg[i, t])), 0.75), 1.25)
            assert float(out[i, t]) == pytest.approx(float(adv[i]) * (0.7 + 0.3 * w), rel=1e-5)


def test_per_token_advantage_gradient_is_reinforce_on_policy():
    # on policy (ratio 1, inside the clip) d loss / d logp_t = -A_t / N for the token-mean surrogate
    adv = cepo_token_advantages(torch.tensor([1.0, -1.0]), torch.randn(2, 3), torch.randn(2, 3), lam=0.5, eps=0.2)
    logp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss = clipped_surrogate(
        logp,
        logp.detach(),
        adv.double(),
        torch.ones(2, 3),
        clip_low=0.2,
        clip_high=0.2,
        dual_clip_c=None,
        agg="token-mean",
        num_tokens=6.0,
        num_seqs=2.0,
        max_len=3,
    ).loss
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, -adv.double() / 6)
    # and gradcheck of the surrogate in float64 on a point strictly inside the clip range
    old = logp.detach() + 0.05

    def f(x):
        return clipped_surrogate(
            x,
            old,
            adv.double(),
            torch.ones(2, 3, dtype=torch.float64),
            clip_low=0.2,
            clip_high=0.2,
            dual_clip_c=None,
            agg="token-mean",
            num_tokens=6.0,
            num_seqs=2.0,
            max_len=3,
        ).loss

    assert torch.autograd.gradcheck(f, (logp.detach().clone().requires_grad_(),))


def test_per_token_advantage_broadcasts_like_the_sequence_form():
    # a [B, T] advantage constant over T equals the [B] form
    logp, old = torch.randn(3, 4), torch.randn(3, 4)
    adv = torch.randn(3)
    kw = dict(
        clip_low=0.2,
        clip_high=0.28,
        dual_clip_c=3.0,
        agg="seq-mean-token-mean",
        num_tokens=12.0,
        num_seqs=3.0,
        max_len=4,
    )
    a = clipped_surrogate(logp, old, adv, torch.ones(3, 4), **kw).loss
    b = clipped_surrogate(logp, old, adv[:, None].expand(3, 4), torch.ones(3, 4), **kw).loss
    torch.testing.assert_close(a, b)


# ---- ACE -------------------------------------------------------------------------------------------------
def test_ace_hand_computed_only_negative_advantages_change():
    old = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    ref = torch.tensor([[-2.0, -2.0, 5.0], [-2.0, -2.0, 5.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # 3rd token of rows 0-1 masked
    c = confidence_shift(old, ref, mask)  # sum of (old - ref) over masked tokens: [2, 2, 0]
    torch.testing.assert_close(c, torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(confidence_shift(old, ref, mask, reduce="mean"), torch.tensor([1.0, 1.0, 0.0]))
    adv = torch.tensor([-1.0, 1.0, -0.5])
    out = ace_advantages(adv, c, alpha=0.5)
    # row 0: A = -1, softplus(2) = ln(1 + e^2) = 2.126928 -> -1 (1 + .5 * 2.126928) = -2.063464
    # row 1: A = +1 unchanged; row 2: A = -.5, softplus(0) = ln 2 -> -.5 (1 + .5 ln 2) = -.673287
    torch.testing.assert_close(
        out, torch.tensor([-(1 + 0.5 * math.log1p(math.e**2)), 1.0, -0.5 * (1 + 0.5 * math.log(2))])
    )


def test_ace_never_flips_a_sign_and_grows_with_confidence():
    adv = torch.tensor([-1.0, -1.0, -1.0, 0.0, 2.0])
    out = ace_advantages(adv, torch.tensor([-5.0, 0.0, 5.0, 9.0, 9.0]), alpha=1.0)
    assert (out[:3] < -1).all() and out[0] > out[1] > out[2]  # more confident -> stronger correction
    assert out[3] == 0 and out[4] == 2


# ---- G-OPD -----------------------------------------------------------------------------------------------
def test_gopd_hand_computed():
    t, b, o = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]]), torch.tensor([[-1.5, -2.5]])
    # lam 1.25: 1.25 (t - b) - (o - b) = [1.25 * 1 - .5, 1.25 * -1 + .5] = [.75, -.75]
    torch.testing.assert_close(gopd_advantages(t, b, o, lam=1.25), torch.tensor([[0.75, -0.75]]))
    # lam 1 (standard OPD): t - o = [.5, -.5]
    torch.testing.assert_close(gopd_advantages(t, b, o, lam=1.0), t - o)
    # lam 0: pure KL-to-base regulariser - (o - b)
    torch.testing.assert_close(gopd_advantages(t, b, o, lam=0.0), -(o - b))
