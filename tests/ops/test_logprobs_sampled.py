"""The log-probs of a truncated sampling distribution (vLLM's processed_logprobs), which the stale-weight alarm
compares with what vLLM reports."""

import math

import pytest
import torch

from sposd.ops.fused import HiddenLogits
from sposd.ops.logprobs import sampled_token_logprobs, token_logprobs


def test_by_hand_top_k_then_top_p():
    # logits [2, 1, 0, -1] at T = 1: p = e^z / Z with Z = e^2 + e + 1 + e^-1 = 7.389 + 2.718 + 1 + 0.368 = 11.475.
    z = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    # top_k = 2 keeps {2, 1}: log p(token 1) = 1 - log(e^2 + e) = 1 - log(10.107) = 1 - 2.3133 = -1.3133
    lp = sampled_token_logprobs(z, torch.tensor([[1]]), top_k=2)
    assert lp.item() == pytest.approx(1 - math.log(math.e**2 + math.e), abs=1e-6)
    # top_p = 0.6 on the full set: p = [0.644, 0.237, 0.087, 0.032]; ascending cumsum 0.032, 0.119, 0.356 <= 0.4
    # drops the three smallest, only token 0 stays: log p(0) = 0, token 1 is outside (-inf)
    assert sampled_token_logprobs(z, torch.tensor([[0]]), top_p=0.6).item() == pytest.approx(0.0, abs=1e-6)
    assert sampled_token_logprobs(z, torch.tensor([[1]]), top_p=0.6).item() == float("-inf")
    # top_p = 0.9: cumsum 0.032, 0.119 <= 0.1 drops only token 3: log p(1) = 1 - log(e^2 + e + 1) = -1.4054
    lp = sampled_token_logprobs(z, torch.tensor([[1]]), top_p=0.9)
    assert lp.item() == pytest.approx(1 - math.log(math.e**2 + math.e + 1), abs=1e-6)


def test_no_truncation_equals_token_logprobs_and_hidden_states_equal_dense():
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(2, 5, 8, generator=g), torch.randn(50, 8, generator=g)
    tokens = torch.randint(0, 50, (2, 5), generator=g)
    dense = h @ W.T
    plain = sampled_token_logprobs(dense, tokens, temperature=1.1)
    assert torch.allclose(plain, token_logprobs(dense, tokens, temperature=1.1), atol=1e-6)
    trunc = sampled_token_logprobs(dense, tokens, temperature=1.1, top_k=20, top_p=0.95, chunk_tokens=3)
    lazy = sampled_token_logprobs(HiddenLogits(h, W), tokens, temperature=1.1, top_k=20, top_p=0.95, chunk_tokens=3)
    assert torch.allclose(trunc, lazy, atol=1e-6)
    assert bool((trunc[trunc > float("-inf")] >= plain[trunc > float("-inf")] - 1e-6).all())  # renormalised up
