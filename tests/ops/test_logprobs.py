import math

import torch

from sposd.ops.logprobs import entropy_from_logits, linear_token_logprobs, token_logprobs


def _reference_logp(logits_BTV, tokens_BT, temperature):
    return torch.log_softmax(logits_BTV.double() / temperature, -1).gather(-1, tokens_BT[..., None])[..., 0]


def test_hand_computed_two_token_vocab():
    # logits [0, ln 3] -> probs [1/4, 3/4]
    # at temperature 2 -> [0, ln 3 / 2] -> probs [1, sqrt 3] / (1 + sqrt 3)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    tok1, tok0 = torch.tensor([[1]]), torch.tensor([[0]])
    torch.testing.assert_close(token_logprobs(logits, tok1), torch.tensor([[math.log(0.75)]]))
    torch.testing.assert_close(
        token_logprobs(logits, tok0, temperature=2.0), torch.tensor([[-math.log(1 + math.sqrt(3.0))]])
    )


def test_matches_log_softmax_on_strided_bf16_view_across_chunks():
    torch.manual_seed(0)
    full_BLV = (3 * torch.randn(3, 8, 50)).bfloat16()
    logits_BTV = full_BLV[:, :-1]  # the learner passes a non-contiguous slice
    tokens_BT = torch.randint(0, 50, (3, 7))
    out = token_logprobs(
        logits_BTV, tokens_BT, temperature=0.7, chunk_tokens=4
    )  # 4 // 3 -> 1 position per chunk
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), _reference_logp(logits_BTV, tokens_BT, 0.7), atol=1e-5, rtol=1e-5
    )


def test_gradcheck_float64():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 5))
    assert torch.autograd.gradcheck(
        lambda z: token_logprobs(z, tokens, temperature=1.3, chunk_tokens=3), (logits,)
    )


def test_bf16_gradient_matches_fp32_autograd():
    torch.manual_seed(2)
    logits32 = torch.randn(2, 6, 40, requires_grad=True)
    logits16 = logits32.detach().bfloat16().requires_grad_()
    tokens = torch.randint(0, 40, (2, 6))
    w = torch.randn(2, 6)
    (_reference_logp(logits32.bfloat16().float(), tokens, 1.1).float() * w).sum().backward()
    (token_logprobs(logits16, tokens, temperature=1.1, chunk_tokens=5) * w).sum().backward()
    assert logits16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits16.grad.float(), logits32.grad, atol=1e-2, rtol=1e-2)


def test_entropy_uniform_and_parity():
    # uniform over 4 tokens -> H = ln 4, at any temperature
    assert torch.allclose(
        entropy_from_logits(torch.zeros(1, 2, 4), temperature=0.5), torch.full((1, 2), math.log(4))
    )
    torch.manual_seed(3)
    logits = torch.randn(2, 5, 11)
    logp = torch.log_softmax(logits / 0.8, -1)
    torch.testing.assert_close(
        entropy_from_logits(logits, temperature=0.8, chunk_tokens=3), -(logp.exp() * logp).sum(-1)
    )


def test_linear_token_logprobs_equals_the_dense_path():
    # logits = h W^T + b computed in blocks of 3 positions: the same log-probs as a dense [N, V] logits tensor
    torch.manual_seed(4)
    h, W, b = torch.randn(7, 5), torch.randn(11, 5), torch.randn(11)
    tokens = torch.randint(0, 11, (7,))
    ours = linear_token_logprobs(h, W, tokens, bias_V=b, temperature=0.9, chunk_tokens=3)
    dense = torch.log_softmax((h @ W.T + b) / 0.9, -1).gather(-1, tokens[:, None])[:, 0]
    torch.testing.assert_close(ours, dense)
