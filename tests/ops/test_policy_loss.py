import math

import pytest
import torch

from sposd.ops.aggregation import AGG_MODES
from sposd.ops.policy_loss import clipped_surrogate, kl_penalty_k3


def _pg(
    logp, old, adv, mask, *, clip_low=0.2, clip_high=0.2, dual_clip_c=None, agg="token-mean", num_tokens=None
):
    n = float(mask.sum()) if num_tokens is None else num_tokens
    return clipped_surrogate(
        logp,
        old,
        adv,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip_c=dual_clip_c,
        agg=agg,
        num_tokens=n,
        num_seqs=float(logp.shape[0]),
        max_len=logp.shape[1],
    )


def test_clip_higher_caps_positive_advantage():
    # log-ratio 1 -> ratio e > 1 + 0.28; adv +1 -> max(-e, -1.28) = -1.28 on every token, all clipped
    out = _pg(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), clip_high=0.28)
    torch.testing.assert_close(out.loss, torch.tensor(-1.28))
    assert out.metrics["loss/clip_frac"] == 1.0


def test_ratio_inside_range_is_unclipped():
    # ratio 1.1 in [0.8, 1.2], adv 2 -> -2 * 1.1 = -2.2
    out = _pg(torch.full((1, 1), math.log(1.1)), torch.zeros(1, 1), torch.tensor([2.0]), torch.ones(1, 1))
    torch.testing.assert_close(out.loss, torch.tensor(-2.2))
    assert out.metrics["loss/clip_frac"] == 0.0


def test_negative_advantage_low_ratio_is_clipped():
    # ratio 0.5, adv -1: max(0.5, 0.8) = 0.8 (the clipped branch), whose gradient is 0
    logp = torch.full((1, 1), math.log(0.5), requires_grad=True)
    out = _pg(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), dual_clip_c=3.0)
    out.loss.backward()
    torch.testing.assert_close(out.loss, torch.tensor(0.8))
    assert out.metrics["loss/clip_frac"] == 1.0 and out.metrics["loss/dual_clip_frac"] == 0.0
    assert logp.grad.item() == 0.0


@pytest.mark.parametrize("dual_clip_c, expected, dual_frac", [(3.0, 3.0, 1.0), (None, 5.0, 0.0)])
def test_dual_clip_bounds_negative_advantage(dual_clip_c, expected, dual_frac):
    # ratio 5, adv -1: max(5, 1.2) = 5; dual clip min(5, 1 * 3) = 3
    out = _pg(
        torch.full((1, 1), math.log(5.0)),
        torch.zeros(1, 1),
        torch.tensor([-1.0]),
        torch.ones(1, 1),
        dual_clip_c=dual_clip_c,
    )
    torch.testing.assert_close(out.loss, torch.tensor(expected))
    assert out.metrics["loss/dual_clip_frac"] == dual_frac
    assert out.metrics["loss/clip_frac"] == 0.0


def test_log_ratio_clamped_at_20():
    # logp - old = 50 -> clamped to 20: ratio e^20, adv -1, no dual clip -> loss e^20, approx_kl -20, no gradient
    logp = torch.full((1, 1), 50.0, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    out = _pg(logp, torch.zeros(1, 1, dtype=torch.float64), adv, torch.ones(1, 1, dtype=torch.float64))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.exp(20.0))
    assert out.metrics["actor/approx_kl"].item() == pytest.approx(-20.0)
    assert logp.grad.item() == 0.0


def test_kl_and_ratio_metrics():
    # log-ratios [ln 2, 0] (third token masked):
    # approx_kl = mean(old - logp) = -ln2 / 2, ratio_mean = (2 + 1) / 2
    logp = torch.tensor([[math.log(2.0), 0.0, 5.0]])
    out = _pg(logp, torch.zeros(1, 3), torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(out.metrics["actor/approx_kl"], torch.tensor(-math.log(2.0) / 2))
    torch.testing.assert_close(out.metrics["actor/ratio_mean"], torch.tensor(1.5))


def test_on_policy_gradient_is_reinforce():
    # ratio = 1 everywhere -> never clipped; d loss / d logp = -A * m / num_tokens
    torch.manual_seed(0)
    logp = torch.randn(2, 5, requires_grad=True)
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0]])
    _pg(logp, logp.detach(), adv, mask, clip_high=0.28, dual_clip_c=3.0, num_tokens=20.0).loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None] * mask / 20)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_gradcheck_float64(agg):
    torch.manual_seed(1)
    old = torch.randn(3, 4, dtype=torch.float64)
    logp = (old + 0.3 * torch.randn(3, 4, dtype=torch.float64)).requires_grad_()
    adv, mask = torch.tensor([1.0, -0.5, -2.0], dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: _pg(x, old, adv, mask, dual_clip_c=1.5, agg=agg).loss, (logp,))


def _verl_loop(logp, old, adv, mask, clip_low, clip_high, c):
    """verl compute_policy_loss_vanilla, token by token, token-mean aggregation and metrics."""
    tot = clipped = dual = kl = n = 0.0
    for i in range(logp.shape[0]):
        a = adv[i].item()
        for t in range(logp.shape[1]):
            if mask[i, t] == 0:
                continue
            d = min(max(logp[i, t].item() - old[i, t].item(), -20.0), 20.0)
            r = math.exp(d)
            l1, l2 = -a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high)
            loss_t = max(l1, l2)
            if c is not None and a < 0:
                dual += float(loss_t > -a * c)
                loss_t = min(loss_t, -a * c)
            tot, clipped, kl, n = tot + loss_t, clipped + float(l2 > l1), kl - d, n + 1
    return tot / n, clipped / n, dual / n, kl / n


@pytest.mark.parametrize("dual_clip_c", [3.0, 1.5, None])
def test_matches_verl_loop(dual_clip_c):
    torch.manual_seed(2)
    old = torch.randn(5, 9)
    logp = old + torch.randn(5, 9)
    adv = torch.tensor([1.5, -0.5, -2.0, 0.0, 0.7])
    mask = (torch.rand(5, 9) > 0.3).float()
    out = _pg(logp, old, adv, mask, clip_high=0.28, dual_clip_c=dual_clip_c)
    ref = _verl_loop(logp, old, adv, mask, 0.2, 0.28, dual_clip_c)
    got = (
        out.loss,
        out.metrics["loss/clip_frac"],
        out.metrics["loss/dual_clip_frac"],
        out.metrics["actor/approx_kl"],
    )
    for g, r in zip(got, ref, strict=True):
        assert float(g) == pytest.approx(r, rel=1e-5, abs=1e-6)


def test_metrics_are_detached():
    logp = torch.randn(2, 3, requires_grad=True)
    out = _pg(logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3), dual_clip_c=3.0)
    assert all(not torch.is_tensor(v) or not v.requires_grad for v in out.metrics.values())


def test_k3_hand_computed_and_clamped():
    # d = ref - logp: d = ln 2 -> 2 - ln 2 - 1 = 1 - ln 2; d = 0 -> 0
    # d = 30 -> clamp 20 -> e^20 - 21 -> clamp 10
    logp = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[math.log(2.0), 0.0, 30.0]])
    torch.testing.assert_close(kl_penalty_k3(logp, ref), torch.tensor([[1 - math.log(2.0), 0.0, 10.0]]))


def test_k3_gradient():
    # k3 = e^d - d - 1 with d = ref - logp -> d k3 / d logp = 1 - e^d
    torch.manual_seed(3)
    ref = torch.randn(2, 4, dtype=torch.float64)
    logp = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    kl_penalty_k3(logp, ref).sum().backward()
    torch.testing.assert_close(logp.grad, 1 - torch.exp(ref - logp.detach()))
    assert torch.autograd.gradcheck(lambda x: kl_penalty_k3(x, ref), (logp.detach().requires_grad_(),))
