"""Ops on `HiddenLogits` (hidden states + output layer, [chunk, V] blocks, recomputed in backward) against the same
ops on the dense logits h W^T + b: values and the gradients w.r.t. hidden states, weight and bias, for every
support, divergence, clip-relevant path and the PAINT interpolation; gradcheck of the autograd function in fp64;
and Qwen3's 151,936-entry vocabulary on a tiny width.
"""

from __future__ import annotations

import pytest
import torch

from sposd.ops.divergence import per_token_divergence
from sposd.ops.fused import HiddenLogits
from sposd.ops.logprobs import entropy_from_logits, token_logprobs
from sposd.ops.teacher_signal import interpolate_teacher_logits_, sg_topk_reverse_kl, teacher_support_entropy
from sposd.ops.token_selection import tip_token_stats

B, T, H, V = 3, 7, 5, 11
LENGTHS = torch.tensor([7, 4, 0])


def _case(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g, dtype=dtype, requires_grad=True)
    Ws = torch.randn(V, H, generator=g, dtype=dtype, requires_grad=True)
    bs = torch.randn(V, generator=g, dtype=dtype, requires_grad=True) if bias else None
    ht = torch.randn(B, T, H, generator=g, dtype=dtype)
    Wt = torch.randn(V, H, generator=g, dtype=dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return hs, Ws, bs, ht, Wt, tokens


def _dense(h, W, b):
    return torch.nn.functional.linear(h, W, b)


def _grads(out, params):
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * w).sum(), [p for p in params if p is not None], allow_unused=True)


def _assert_same(fn, *, atol=1e-10):
    hs, Ws, bs, ht, Wt, tokens = _case()
    dense = fn(_dense(hs, Ws, bs), _dense(ht, Wt, None), tokens)
    lazy = fn(HiddenLogits(hs, Ws, bs), HiddenLogits(ht, Wt), tokens)
    torch.testing.assert_close(lazy, dense, atol=atol, rtol=0)
    for a, b in zip(_grads(lazy, (hs, Ws, bs)), _grads(dense, (hs, Ws, bs)), strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("support", ["full", "teacher_topk", "student_topk_tail"])
def test_divergences_on_hidden_states_equal_the_dense_op(kind, support):
    _assert_same(
        lambda s, t, _: per_token_divergence(
            s, t, kind=kind, beta=0.3, temperature=0.7, support=support, topk=3, lengths_B=LENGTHS, chunk_tokens=3
        )
    )


@pytest.mark.parametrize("index_from", ["student", "teacher"])
def test_stop_gradient_topk_rkl_on_hidden_states_equals_the_dense_op(index_from):
    _assert_same(
        lambda s, t, _: sg_topk_reverse_kl(
            s, t, topk=4, index_from=index_from, temperature=1.3, lengths_B=LENGTHS, chunk_tokens=2
        )[0]
    )


def test_token_logprobs_on_hidden_states_equal_the_dense_op():
    _assert_same(lambda s, t, y: token_logprobs(s, y, temperature=0.8, chunk_tokens=4))


def test_token_clip_of_the_hidden_state_divergence_keeps_the_dense_gradient():
    # clamp(max=c) after the op: the clipped positions get no gradient on either path
    _assert_same(
        lambda s, t, _: per_token_divergence(s, t, kind="fkl", lengths_B=LENGTHS, chunk_tokens=4).clamp(max=1.0)
    )


def test_no_grad_statistics_on_hidden_states_equal_the_dense_ops():
    hs, Ws, bs, ht, Wt, tokens = _case()
    S, T_ = HiddenLogits(hs, Ws, bs), HiddenLogits(ht, Wt)
    Sd, Td = _dense(hs, Ws, bs).detach(), _dense(ht, Wt, None)
    with torch.no_grad():
        torch.testing.assert_close(
            entropy_from_logits(S, temperature=0.9, chunk_tokens=2), entropy_from_logits(Sd, temperature=0.9)
        )
        for support in ("full", "teacher_topk", "student_topk_tail"):
            got = teacher_support_entropy(S, T_, support=support, topk=3, lengths_B=LENGTHS, chunk_tokens=3)
            ref = teacher_support_entropy(Sd, Td, support=support, topk=3, lengths_B=LENGTHS)
            torch.testing.assert_close(got, ref)
        for jsd_topk in (0, 4):
            got = tip_token_stats(S[1, :4], T_[1, :4], jsd_topk=jsd_topk, chunk_tokens=3)
            ref = tip_token_stats(Sd[1, :4], Td[1, :4], jsd_topk=jsd_topk)
            for a, b in zip(got, ref, strict=True):
                torch.testing.assert_close(a, b)


def test_paint_interpolation_is_applied_to_every_teacher_block():
    hs, Ws, bs, ht, Wt, tokens = _case()
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) < 0.5
    S, T_ = HiddenLogits(hs, Ws, bs), HiddenLogits(ht, Wt)
    Sd, Td = _dense(hs, Ws, bs), _dense(ht, Wt, None).detach().clone()
    interpolate_teacher_logits_(T_, S, mask, gamma=0.4)
    interpolate_teacher_logits_(Td, Sd, mask, gamma=0.4)
    lazy = per_token_divergence(S, T_, kind="jsd", beta=0.5, lengths_B=LENGTHS, chunk_tokens=3)
    dense = per_token_divergence(Sd, Td, kind="jsd", beta=0.5, lengths_B=LENGTHS)
    torch.testing.assert_close(lazy, dense, atol=1e-10, rtol=0)
    for a, b in zip(_grads(lazy, (hs, Ws, bs)), _grads(dense, (hs, Ws, bs)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # indexing keeps the interpolation (TIP-style kept positions read the same teacher)
    r, c = mask.nonzero(as_tuple=True)
    torch.testing.assert_close(T_[r, c].block(torch.arange(r.numel())), Td[r, c])


def test_indexing_and_detach_stay_lazy():
    hs, Ws, bs, *_ = _case()
    S = HiddenLogits(hs, Ws, bs)
    r, c = torch.tensor([0, 2, 1]), torch.tensor([1, 3, 6])
    sub = S[r, c][None]
    assert isinstance(sub, HiddenLogits) and sub.shape == (1, 3, V)
    assert not S.detach().requires_grad and S.requires_grad
    torch.testing.assert_close(sub.block(torch.arange(3)), _dense(hs, Ws, bs)[r, c])


@pytest.mark.parametrize("support", ["full", "student_topk_tail"])
def test_gradcheck_of_the_hidden_state_divergence(support):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ht, Wt = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    lengths = torch.tensor([3, 2])

    def f(h, W, b):
        return per_token_divergence(
            HiddenLogits(h, W, b),
            HiddenLogits(ht, Wt),
            kind="jsd",
            beta=0.4,
            support=support,
            topk=2,
            temperature=0.9,
            lengths_B=lengths,
            chunk_tokens=2,
        )

    assert torch.autograd.gradcheck(f, (h, W, b))


def test_gradcheck_of_the_hidden_state_token_logprobs():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 6, (2, 3), generator=g)
    assert torch.autograd.gradcheck(
        lambda h, W: token_logprobs(HiddenLogits(h, W), tokens, temperature=1.2, chunk_tokens=4), (h, W)
    )


def test_qwen3_vocabulary_on_a_tiny_width():
    # 151,936 logits per position (Qwen3's vocabulary), 64 positions in blocks of 16: the [16, V] blocks exist,
    # a [4, 16, V] tensor never does; values and gradients equal the dense path. fp64: in fp32 both paths sum
    # 151,936 products per hidden-state gradient entry and each is ~1e-4 off an fp64 reference (measured), so an
    # fp32 comparison would test rounding, not the path.
    Vq, Hq, f64 = 151_936, 8, torch.float64
    g = torch.Generator().manual_seed(4)
    h = (torch.randn(4, 16, Hq, generator=g, dtype=f64) * 2).requires_grad_()
    W = torch.randn(Vq, Hq, generator=g, dtype=f64).mul_(0.5).requires_grad_()
    ht, Wt = torch.randn(4, 16, Hq, generator=g, dtype=f64), torch.randn(Vq, Hq, generator=g, dtype=f64)
    tokens = torch.randint(0, Vq, (4, 16), generator=g)
    lengths = torch.tensor([16, 9, 3, 12])

    def loss(s, t):
        d = per_token_divergence(s, t, kind="fkl", lengths_B=lengths, chunk_tokens=16)
        return d.sum() + token_logprobs(s, tokens, chunk_tokens=16).sum()

    lazy = loss(HiddenLogits(h, W), HiddenLogits(ht, Wt))
    gl = torch.autograd.grad(lazy, (h, W))
    dense = loss(_dense(h, W, None), _dense(ht, Wt, None))
    gd = torch.autograd.grad(dense, (h, W))
    torch.testing.assert_close(lazy, dense, atol=1e-9, rtol=0)
    for a, b in zip(gl, gd, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_no_position_at_all_gives_empty_or_zero_outputs_with_a_graph():
    # TIP may keep no position of a micro-batch: [1, 0, V] lazy logits, and rows whose lengths are all 0
    hs, Ws, bs, ht, Wt, tokens = _case()
    none = torch.zeros(0, dtype=torch.long)
    S, T_ = HiddenLogits(hs, Ws, bs)[none, none][None], HiddenLogits(ht, Wt)[none, none][None]
    d = per_token_divergence(S, T_, kind="rkl", lengths_B=torch.tensor([0]))
    assert d.shape == (1, 0)
    zero = per_token_divergence(HiddenLogits(hs, Ws, bs), HiddenLogits(ht, Wt), kind="fkl", lengths_B=torch.zeros(B))
    assert zero.shape == (B, T) and not zero.any()
    gh, gW = torch.autograd.grad(zero.sum() + d.sum(), (hs, Ws))
    assert not gh.any() and not gW.any()
