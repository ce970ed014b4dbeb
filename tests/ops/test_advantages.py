import statistics

import pytest
import torch

from sposd.ops.advantages import group_advantages, ragged_group_advantages


def test_hand_computed_grpo_and_dr_grpo():
    # r = [1, 0, 0, 0]: mean 0.25; unbiased std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(
        group_advantages(r, std_normalize=True, eps=0.0), torch.tensor([[1.5, -0.5, -0.5, -0.5]])
    )
    torch.testing.assert_close(
        group_advantages(r, std_normalize=False), torch.tensor([[0.75, -0.25, -0.25, -0.25]])
    )


def test_uniform_group_has_zero_advantage():
    assert group_advantages(torch.ones(2, 5), std_normalize=True).abs().max() == 0


@pytest.mark.parametrize("std_normalize, expected", [(True, 1.0 / (1.0 + 1e-6)), (False, 1.0)])
def test_group_of_one_uses_mean_0_std_1(std_normalize, expected):
    # verl: a singleton group gets mu = 0, sigma = 1, so A = r / (1 + eps) or A = r
    out = group_advantages(torch.tensor([[1.0], [0.0]]), std_normalize=std_normalize)
    torch.testing.assert_close(out, torch.tensor([[expected], [0.0]]))


def _verl_loop(groups, std_normalize, eps=1e-6):
    """verl compute_grpo_outcome_advantage, one group at a time in plain Python."""
    out = []
    for r in groups:
        mu, sigma = (0.0, 1.0) if len(r) == 1 else (statistics.mean(r), statistics.stdev(r))
        out += [(x - mu) / (sigma + eps) if std_normalize else x - mu for x in r]
    return torch.tensor(out)


@pytest.mark.parametrize("std_normalize", [True, False])
def test_vectorized_matches_loop(std_normalize):
    torch.manual_seed(0)
    rewards_PG = torch.randint(0, 2, (6, 5)).float() + 0.1 * torch.randn(6, 5)
    out = group_advantages(rewards_PG, std_normalize=std_normalize).flatten()
    torch.testing.assert_close(out, _verl_loop(rewards_PG.tolist(), std_normalize), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("std_normalize", [True, False])
def test_ragged_matches_loop(std_normalize):
    groups = [[1.0, 0.0, 0.0], [1.0], [0.0, 1.0, 1.0, 0.5], [0.0, 0.0]]
    out = ragged_group_advantages(groups, std_normalize=std_normalize)
    torch.testing.assert_close(out, _verl_loop(groups, std_normalize), atol=1e-6, rtol=1e-6)
    assert ragged_group_advantages([], std_normalize=True).numel() == 0
