import pytest
import torch

from sposd.ops.shaping import overlong_penalty


def test_boundaries():
    # L_max = 100, L_cache = 20 -> free up to 80, then (80 - L) / 20, then -1
    L = torch.tensor([0, 79, 80, 81, 90, 100, 101, 500])
    expected = torch.tensor([0.0, 0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(L, max_len=100, cache_len=20), expected)


def test_factor_scales_penalty():
    # factor 0.5: L = 90 -> -0.5 * 0.5; L = 120 (beyond L_max) -> -0.5
    out = overlong_penalty(torch.tensor([90, 120]), max_len=100, cache_len=20, factor=0.5)
    torch.testing.assert_close(out, torch.tensor([-0.25, -0.5]))


def test_whole_budget_as_cache():
    # L_cache = L_max: linear from 0 at L = 0 to -1 at L = L_max
    torch.testing.assert_close(
        overlong_penalty(torch.tensor([0, 5, 10]), max_len=10, cache_len=10), torch.tensor([0.0, -0.5, -1.0])
    )


@pytest.mark.parametrize("cache_len", [0, 101])
def test_invalid_cache_len(cache_len):
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=100, cache_len=cache_len)
