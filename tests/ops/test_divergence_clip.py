"""OPSD-v3's per-element clip and the token clip in the per-block divergence math, and its per-position stats."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.ops.divergence import divergence_from_logprobs, divergence_with_stats, naive_divergence, per_token_divergence
from sposd.ops.divergence_blocks import block_divergence, block_divergence_grad

# S = softmax([0, 0]) = [0.5, 0.5]; T = softmax([ln 3, 0]) = [0.75, 0.25]
S_LOGITS = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
T_LOGITS = torch.tensor([[[math.log(3.0), 0.0]]], dtype=torch.float64)


def test_element_clip_hand_computed():
    # fkl terms: 0.75 ln(0.75 / 0.5) = 0.304099, 0.25 ln(0.25 / 0.5) = -0.173287; D = 0.130812
    # element clip 0.05: 0.05 + (-0.173287) = -0.123287 (negative: only positive terms are capped)
    # token clip 0.05: min(0.130812, 0.05) = 0.05
    s = S_LOGITS.clone().requires_grad_(True)
    d = per_token_divergence(s, T_LOGITS, kind="fkl", clip=0.05, clip_mode="element")
    torch.testing.assert_close(d, torch.tensor([[0.05 + 0.25 * math.log(0.5)]], dtype=torch.float64))
    d.sum().backward()
    # dD/dlog S = [0 (clipped), -0.25]; grad z = a - S sum(a) = [0 + 0.125, -0.25 + 0.125]: the clipped entry's
    # gradient is reversed (unclipped S - T = [-0.25, +0.25])
    torch.testing.assert_close(s.grad, torch.tensor([[[0.125, -0.125]]], dtype=torch.float64))
    tok = per_token_divergence(S_LOGITS, T_LOGITS, kind="fkl", clip=0.05, clip_mode="token")
    torch.testing.assert_close(tok, torch.tensor([[0.05]], dtype=torch.float64))


def test_element_clip_stats_hand_computed():
    # one of the two fkl terms exceeds 0.05; H(T) = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335; H(S) = ln 2
    _, st = divergence_with_stats(S_LOGITS, T_LOGITS, kind="fkl", clip=0.05, clip_mode="element")
    assert st["clipped"].item() == 1.0
    torch.testing.assert_close(st["teacher_entropy"].item(), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    torch.testing.assert_close(st["student_entropy"].item(), math.log(2))
    _, st = divergence_with_stats(S_LOGITS, T_LOGITS, kind="fkl", clip=0.05, clip_mode="token")
    assert st["clipped"].item() == 1.0  # D = 0.1308 > 0.05
    _, st = divergence_with_stats(S_LOGITS, T_LOGITS, kind="fkl", clip=0.5, clip_mode="token")
    assert st["clipped"].item() == 0.0


@pytest.mark.parametrize("kind,beta", [("fkl", 0.0), ("rkl", 1.0), ("jsd", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize(
    "mode,support",
    [
        ("element", "full"),
        ("element", "teacher_topk"),
        ("token", "full"),
        ("token", "teacher_topk"),
        ("token", "student_topk_tail"),
    ],
)
def test_clip_parity_with_naive_and_gradients(kind, beta, mode, support):
    """Chunked (full) or top-k vs OPSD's way (full [B, T, V] terms, clamp, sum, autograd): loss and gradient."""
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.randn(2, 5, 11, generator=g, dtype=torch.float64) * 2
    lengths = torch.tensor([5, 3])
    clip = 0.02
    d = per_token_divergence(
        s,
        t,
        kind=kind,
        beta=beta,
        temperature=1.1,
        support=support,
        topk=4,
        lengths_B=lengths,
        chunk_tokens=2,
        clip=clip,
        clip_mode=mode,
    )
    (d * torch.arange(1.0, 6.0, dtype=torch.float64)).sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    valid = torch.arange(5)[None] < lengths[:, None]
    if support == "full":
        ref = naive_divergence(s2, t, kind=kind, beta=beta, temperature=1.1, clip=clip, clip_mode=mode) * valid
    elif support == "teacher_topk":  # OPSD's --top_k_loss with the clip, by hand: both renormalised over the top 4
        idx = t.topk(4, dim=-1).indices
        ls = torch.log_softmax(s2.gather(-1, idx) / 1.1, -1)
        lt = torch.log_softmax(t.gather(-1, idx) / 1.1, -1)
        ref = divergence_from_logprobs(ls, lt, kind=kind, beta=beta, element_clip=clip if mode == "element" else None)
        ref = (ref.clamp(max=clip) if mode == "token" else ref) * valid
    else:
        ref = per_token_divergence(
            s2, t, kind=kind, beta=beta, temperature=1.1, support=support, topk=4, lengths_B=lengths, chunk_tokens=2
        ).clamp(max=clip)
    torch.testing.assert_close(d, ref)
    (ref * torch.arange(1.0, 6.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)


@pytest.mark.parametrize("kind,beta", [("fkl", 0.0), ("rkl", 1.0), ("jsd", 0.5)])
def test_element_clip_gradcheck(kind, beta):
    """The analytic block gradient is the derivative of the clipped sum (away from the clip's kink)."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 7, generator=g, dtype=torch.float64)
    t = torch.randn(3, 7, generator=g, dtype=torch.float64) * 2
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(x):
        return block_divergence(x, t, kind=kind, beta=beta, tau=1.3, clip=0.03, clip_mode="element")[0]

    D, saved, _ = block_divergence(s, t, kind=kind, beta=beta, tau=1.3, clip=0.03, clip_mode="element")
    analytic = block_divergence_grad(s, t, saved, w, kind=kind, beta=beta, tau=1.3, clip=0.03, clip_mode="element")
    eps = 1e-6
    numeric = torch.zeros_like(s)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            e = torch.zeros_like(s)
            e[i, j] = eps
            numeric[i, j] = ((f(s + e) - f(s - e)) * w).sum() / (2 * eps)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-5)


def test_clip_off_equals_unclipped_and_element_bounds():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 4, 9, generator=g), torch.randn(1, 4, 9, generator=g)
    full = per_token_divergence(s, t, kind="fkl")
    big = per_token_divergence(s, t, kind="fkl", clip=1e6, clip_mode="element")
    torch.testing.assert_close(full, big)
    small = per_token_divergence(s, t, kind="fkl", clip=1e-3, clip_mode="element")
    assert (small <= full + 1e-6).all()
    with pytest.raises(ValueError, match="clip_mode"):
        per_token_divergence(s, t, kind="fkl", clip=0.1, clip_mode="vocab")
