"""Divergences: hand-computed 3-token cases, JSD endpoints, chunked == naive, gradcheck, masks, PAINT ops."""

from __future__ import annotations

import math

import pytest
import torch

from sposd.ops.divergence import (
    _log1mexp,
    divergence_from_logprobs,
    naive_divergence,
    per_token_divergence,
    resolve_divergence,
)
from sposd.ops.teacher_signal import (
    entropy_mismatch_mask,
    interpolate_teacher_logits_,
    sampled_token_loss,
    sg_topk_reverse_kl,
    teacher_support_entropy,
)

LN2 = math.log(2)
T3 = torch.tensor([0.5, 0.25, 0.25])
S3 = torch.tensor([0.25, 0.5, 0.25])


def test_hand_computed_on_three_tokens():
    ls, lt = S3.log(), T3.log()
    # KL(T||S) = .5 ln(.5/.25) + .25 ln(.25/.5) + .25 ln(.25/.25) = .5 ln2 - .25 ln2 = .25 ln2
    torch.testing.assert_close(divergence_from_logprobs(ls, lt, kind="fkl"), torch.tensor(0.25 * LN2))
    # KL(S||T) = .25 ln(.25/.5) + .5 ln(.5/.25) + 0 = .25 ln2
    torch.testing.assert_close(divergence_from_logprobs(ls, lt, kind="rkl"), torch.tensor(0.25 * LN2))
    # JSD(.5): M = [.375, .375, .25]; KL(T||M) = .5 ln(.5/.375) + .25 ln(.25/.375) = .5 ln(4/3) + .25 ln(2/3)
    # KL(S||M) = .25 ln(2/3) + .5 ln(4/3) (same by symmetry) -> JSD = .5 ln(4/3) + .25 ln(2/3)
    jsd = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3)
    torch.testing.assert_close(divergence_from_logprobs(ls, lt, kind="jsd", beta=0.5), torch.tensor(jsd))
    # JSD(.25): M = .25 T + .75 S = [.3125, .4375, .25];
    # .25 [.5 ln(.5/.3125) + .25 ln(.25/.4375)] + .75 [.25 ln(.25/.3125) + .5 ln(.5/.4375)]
    j25 = 0.25 * (0.5 * math.log(1.6) + 0.25 * math.log(4 / 7)) + 0.75 * (0.25 * math.log(0.8) + 0.5 * math.log(8 / 7))
    torch.testing.assert_close(divergence_from_logprobs(ls, lt, kind="jsd", beta=0.25), torch.tensor(j25))


def test_hand_computed_gradients_of_the_chunked_path():
    # logits = log-probs, tau = 1: S = [.25, .5, .25], T = [.5, .25, .25]
    s = S3.log().reshape(1, 1, 3).requires_grad_()
    t = T3.log().reshape(1, 1, 3)
    # fkl: dD/dz = S - T = [-.25, .25, 0]
    (g,) = torch.autograd.grad(per_token_divergence(s, t, kind="fkl").sum(), s)
    torch.testing.assert_close(g[0, 0], torch.tensor([-0.25, 0.25, 0.0]))
    # rkl: S (log S/T - D), D = .25 ln2, log S/T = [-ln2, ln2, 0]
    #   = [.25 (-1.25 ln2), .5 (.75 ln2), .25 (-.25 ln2)] = ln2 [-.3125, .375, -.0625]
    (g,) = torch.autograd.grad(per_token_divergence(s, t, kind="rkl").sum(), s)
    torch.testing.assert_close(g[0, 0], LN2 * torch.tensor([-0.3125, 0.375, -0.0625]))
    # at tau = 2 the same logits give softmax(z / 2) and the gradient carries an extra 1/2
    s2, t2 = (2 * S3.log()).reshape(1, 1, 3).requires_grad_(), (2 * T3.log()).reshape(1, 1, 3)
    (g,) = torch.autograd.grad(per_token_divergence(s2, t2, kind="fkl", temperature=2.0).sum(), s2)
    torch.testing.assert_close(g[0, 0], torch.tensor([-0.125, 0.125, 0.0]))


def test_jsd_endpoints_follow_the_code_convention_and_half_is_symmetric():
    assert resolve_divergence("jsd", 0.0) == ("fkl", 0.0) and resolve_divergence("jsd", 1.0) == ("rkl", 1.0)
    ls, lt = torch.randn(4, 7).log_softmax(-1), torch.randn(4, 7).log_softmax(-1)
    for beta, kind in ((0.0, "fkl"), (1.0, "rkl")):
        torch.testing.assert_close(
            divergence_from_logprobs(ls, lt, kind="jsd", beta=beta), divergence_from_logprobs(ls, lt, kind=kind)
        )
    torch.testing.assert_close(
        divergence_from_logprobs(ls, lt, kind="jsd"), divergence_from_logprobs(lt, ls, kind="jsd")
    )
    with pytest.raises(ValueError, match="not one of"):
        resolve_divergence("kl", 0.5)


def test_zero_probabilities_give_no_nan():
    lt = torch.tensor([0.0, -math.inf, -math.inf])  # teacher certain of token 0
    ls = torch.tensor([0.5, 0.5, 0.0]).log()  # student gives token 2 probability 0
    # KL(T||S) = 1 ln(1/.5) = ln2; JSD is bounded; KL(S||T) is truly infinite (S puts mass where T has none)
    torch.testing.assert_close(divergence_from_logprobs(ls, lt, kind="fkl"), torch.tensor(LN2))
    assert torch.isfinite(divergence_from_logprobs(ls, lt, kind="jsd"))
    assert divergence_from_logprobs(ls, lt, kind="rkl") == math.inf


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_a_token_impossible_under_both_gives_zero_gradient_not_nan(kind):
    # token 3 has probability 0 under both (a -inf log-prob): it adds 0 to D and gets gradient 0, never NaN
    ls = torch.tensor([0.5, 0.3, 0.2, 0.0]).log().requires_grad_()
    lt = torch.tensor([0.25, 0.25, 0.5, 0.0]).log()
    d = divergence_from_logprobs(ls, lt, kind=kind)
    ref = divergence_from_logprobs(ls[:3].detach(), lt[:3], kind=kind)
    torch.testing.assert_close(d.detach(), ref)
    d.backward()
    assert torch.isfinite(ls.grad).all() and ls.grad[3] == 0


def test_masked_vocabulary_logits_in_the_chunked_path():
    # the last vocabulary entry is -inf for both models: D is the divergence over the other 6, gradient 0 there
    torch.manual_seed(5)
    s = torch.randn(2, 4, 7)
    s[..., -1] = -math.inf
    s.requires_grad_()
    t = torch.randn(2, 4, 7)
    t[..., -1] = -math.inf
    for kind in ("fkl", "rkl", "jsd"):
        d = per_token_divergence(s, t, kind=kind, chunk_tokens=3)
        (g,) = torch.autograd.grad(d.sum(), s)
        torch.testing.assert_close(d, naive_divergence(s[..., :-1], t[..., :-1], kind=kind))
        assert torch.isfinite(g).all() and g[..., -1].abs().max() == 0


@pytest.mark.parametrize("kind,beta", [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.5), ("jsd", 0.3)])
def test_chunked_full_vocab_equals_naive_on_a_strided_view_with_lengths(kind, beta):
    torch.manual_seed(0)
    full = torch.randn(3, 7, 11, requires_grad=True)  # a [B, T+1, V] model output; the loss sees [:, :-1]
    teacher = torch.randn(3, 6, 11)
    lengths = torch.tensor([6, 3, 0])
    w = torch.randn(3, 6)
    d = per_token_divergence(
        full[:, :-1], teacher, kind=kind, beta=beta, temperature=1.3, lengths_B=lengths, chunk_tokens=2
    )
    (d * w).sum().backward()
    g = full.grad.clone()
    full.grad = None
    mask = torch.arange(6)[None] < lengths[:, None]
    dn = naive_divergence(full[:, :-1], teacher, kind=kind, beta=beta, temperature=1.3) * mask
    (dn * w).sum().backward()
    torch.testing.assert_close(d, dn, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, full.grad, atol=1e-6, rtol=1e-5)
    assert g[1, 3:].abs().max() == 0 and g[2].abs().max() == 0  # beyond each row's length


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_bf16_student_is_upcast_per_chunk(kind):
    torch.manual_seed(1)
    s = torch.randn(2, 5, 13).bfloat16().requires_grad_()
    t = torch.randn(2, 5, 13).bfloat16()
    w = torch.randn(2, 5)
    d = per_token_divergence(s, t, kind=kind, temperature=1.1, chunk_tokens=3)
    (g,) = torch.autograd.grad((d * w).sum(), s)
    assert d.dtype == torch.float32 and g.dtype == torch.bfloat16
    s32 = s.detach().float().requires_grad_()
    d32 = naive_divergence(s32, t.float(), kind=kind, temperature=1.1)
    (g32,) = torch.autograd.grad((d32 * w).sum(), s32)
    torch.testing.assert_close(d, d32, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g.float(), g32, atol=2e-3, rtol=1e-2)  # the gradient is rounded to bf16


@pytest.mark.parametrize("support", ["full", "teacher_topk", "student_topk_tail"])
@pytest.mark.parametrize("kind,beta", [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.3)])
def test_gradcheck_float64(support, kind, beta):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([3, 2])

    def f(z):
        return per_token_divergence(
            z, t, kind=kind, beta=beta, temperature=0.7, support=support, topk=3, lengths_B=lengths, chunk_tokens=2
        )

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("support", ["teacher_topk", "student_topk_tail"])
def test_topk_with_k_equal_vocab_is_the_full_divergence(support):
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    # k = V leaves no tail mass: log(1 - 1) is floored at SDPO's log(1 - exp(-1e-7)) = log(~1e-7)
    assert _log1mexp(torch.tensor(0.0)).exp() < 1e-6
    for kind in ("fkl", "rkl", "jsd"):
        torch.testing.assert_close(
            per_token_divergence(s, t, kind=kind, support=support, topk=9),
            naive_divergence(s, t, kind=kind),
            atol=1e-5,
            rtol=1e-4,
        )


def test_student_topk_tail_bucket_holds_the_rest_of_the_mass():
    # V = 3, k = 1: student top token 0 (p .5) + tail .5; teacher at token 0 p .25 + tail .75
    s = torch.tensor([[[0.5, 0.25, 0.25]]]).log()
    t = torch.tensor([[[0.25, 0.5, 0.25]]]).log()
    d = per_token_divergence(s, t, kind="fkl", support="student_topk_tail", topk=1)
    # KL(T||S) on {0, tail} = .25 ln(.25/.5) + .75 ln(.75/.5)
    torch.testing.assert_close(d, torch.tensor([[0.25 * math.log(0.5) + 0.75 * math.log(1.5)]]))


@pytest.mark.parametrize("support", ["full", "teacher_topk", "student_topk_tail"])
def test_teacher_gets_no_gradient_and_positions_beyond_length_get_zero(support):
    torch.manual_seed(6)
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, requires_grad=True)
    d = per_token_divergence(s, t, kind="jsd", support=support, topk=2, lengths_B=torch.tensor([2, 0]))
    d.sum().backward()
    assert t.grad is None
    assert d[0, 2] == 0 and not d[1].any() and d[0, :2].min() > 0
    assert s.grad[0, 2].abs().max() == 0 and s.grad[1].abs().max() == 0 and s.grad[0, :2].abs().max() > 0


def test_sampled_token_loss_value_and_gradient():
    ls = torch.tensor([-1.0, -2.0], requires_grad=True)
    lt = torch.tensor([-0.5, -3.0])
    out = sampled_token_loss(ls, lt)
    # A = sg(lt - ls) = [.5, -1]; loss = -A ls = [.5, -2]; d/d ls = -A
    torch.testing.assert_close(out, torch.tensor([0.5, -2.0]))
    out.sum().backward()
    torch.testing.assert_close(ls.grad, torch.tensor([-0.5, 1.0]))


def test_entropy_mismatch_mask_ties_rounding_and_empty_rows():
    h_t = torch.tensor([[1.0, 3.0, 3.0, 0.0, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    h_s = torch.zeros(3, 5)
    lengths = torch.tensor([4, 5, 0])
    m = entropy_mismatch_mask(h_t, h_s, lengths, q=0.3)
    # row 0: length 4 -> ceil(1.2) = 2 of positions 0..3 (position 4 is beyond the length): mismatches
    # [1, 3, 3, 0] -> the tie 3, 3 keeps both (positions 1, 2)
    assert m[0].tolist() == [False, True, True, False, False]
    # row 1: all equal, ceil(1.5) = 2 -> the earliest two; row 2: empty
    assert m[1].tolist() == [True, True, False, False, False] and not m[2].any()
    # sign: teacher_sharper ranks H_S - H_T (here all <= 0: the smallest |.| first -> position 3)
    assert entropy_mismatch_mask(h_t, h_s, lengths, q=0.25, sign="teacher_sharper")[0].tolist() == [
        False,
        False,
        False,
        True,
        False,
    ]


def test_interpolation_touches_only_masked_positions():
    t = torch.zeros(1, 3, 2)
    s = torch.tensor([[[2.0, 4.0], [6.0, 8.0], [1.0, 1.0]]], requires_grad=True)
    mask = torch.tensor([[False, True, False]])
    interpolate_teacher_logits_(t, s, mask, gamma=0.25)
    torch.testing.assert_close(t, torch.tensor([[[0.0, 0.0], [1.5, 2.0], [0.0, 0.0]]]))
    t2 = torch.ones(1, 3, 2)
    interpolate_teacher_logits_(t2, s, mask, gamma=0.0)
    torch.testing.assert_close(t2, torch.ones(1, 3, 2))
    interpolate_teacher_logits_(t2, s, mask, gamma=1.0)
    torch.testing.assert_close(t2[0, 1], torch.tensor([6.0, 8.0]))


def _gkd_style_jsd(student_logits, teacher_logits, beta, temperature):
    """The formula of the public generalized_jsd_loss (OPSD / TRL GKD), written with F.kl_div as they do:
    beta 0 -> kl_div(log S, log T) = KL(T||S); beta 1 -> kl_div(log T, log S) = KL(S||T); otherwise the
    mixture log M = logsumexp([log S + log(1-beta), log T + log beta]) and beta KL(T||M) + (1-beta) KL(S||M)."""
    import torch.nn.functional as F

    ls = F.log_softmax(student_logits / temperature, dim=-1)
    lt = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        return F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta)
    lm = torch.logsumexp(torch.stack([ls + torch.log1p(-b), lt + torch.log(b)]), dim=0)
    kl_t = F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_parity_with_the_public_generalized_jsd_formula(beta):
    torch.manual_seed(4)
    s = torch.randn(2, 5, 17, requires_grad=True)
    t = torch.randn(2, 5, 17)
    ref = _gkd_style_jsd(s, t, beta, 1.1)
    ours = per_token_divergence(s, t, kind="jsd", beta=beta, temperature=1.1, chunk_tokens=3)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    (g_ref,) = torch.autograd.grad(ref.sum(), s)
    (g_ours,) = torch.autograd.grad(ours.sum(), s)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)


# ---- stop-gradient top-k reverse KL (Many Faces fix) ---------------------------------------------------------
def test_sg_topk_hand_computed():
    # S = [.5, .3, .2], T = [.2, .3, .5]; K = the student's top 2 = {0, 1}
    # c_0 = .5 ln(.5 / .2) = .5 ln 2.5, c_1 = .3 ln 1 = 0
    # L = c_0 ln .5 + c_1 ln .3; truncated KL = c_0 + c_1
    s = torch.tensor([0.5, 0.3, 0.2]).log().view(1, 1, 3).requires_grad_()
    t = torch.tensor([0.2, 0.3, 0.5]).log().view(1, 1, 3)
    loss, kl = sg_topk_reverse_kl(s, t, topk=2)
    c0 = 0.5 * math.log(2.5)
    torch.testing.assert_close(loss, torch.tensor([[c0 * math.log(0.5)]]))
    torch.testing.assert_close(kl, torch.tensor([[c0]]))
    loss.sum().backward()
    # dL/dz_u = sum_{v in K} c_v (1[u = v] - S_u) = c_u 1[u in K] - S_u (c_0 + c_1) = [.5 c0, -.3 c0, -.2 c0]
    torch.testing.assert_close(s.grad[0, 0], c0 * torch.tensor([0.5, -0.3, -0.2]))
    # the teacher's top 2 = {2, 1}: c_2 = .2 ln(.2 / .5) = .2 ln .4, L = c_2 ln .2 + 0
    loss_t, kl_t = sg_topk_reverse_kl(s.detach(), t, topk=2, index_from="teacher")
    torch.testing.assert_close(loss_t, torch.tensor([[0.2 * math.log(0.4) * math.log(0.2)]]))
    torch.testing.assert_close(kl_t, torch.tensor([[0.2 * math.log(0.4)]]))


def _naive_sg_topk(s, t, k, tau, from_teacher=False):
    """The public-formula objective with plain autograd: sum_{v in K} sg(S (log S - log T)) log S."""
    ls, lt = torch.log_softmax(s / tau, -1), torch.log_softmax(t / tau, -1)
    idx = (t if from_teacher else s.detach()).topk(k, -1).indices
    ls_k, lt_k = ls.gather(-1, idx), lt.gather(-1, idx)
    coef = (ls_k.exp() * (ls_k - lt_k)).detach()
    return (coef * ls_k).sum(-1)


@pytest.mark.parametrize("from_teacher", [False, True])
def test_sg_topk_parity_with_autograd_of_the_formula(from_teacher):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 13, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 13, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours, _ = sg_topk_reverse_kl(
        s1,
        t,
        topk=4,
        index_from="teacher" if from_teacher else "student",
        temperature=1.3,
        lengths_B=lengths,
        chunk_tokens=2,
    )
    ref = _naive_sg_topk(s2, t, 4, 1.3, from_teacher) * (torch.arange(5)[None] < lengths[:, None])
    torch.testing.assert_close(ours, ref)
    w = torch.randn(2, 5, generator=g, dtype=torch.float64)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert s1.grad[1, 3:].abs().max() == 0  # beyond the row's length


def test_sg_topk_over_the_whole_vocabulary_has_the_reverse_kl_gradient():
    # With K = V the objective's gradient is sum_v S (log S - log T) grad log S, which is the exact reverse-KL
    # gradient (the dropped term sum_v S grad log S = grad sum_v S = 0). (gradcheck does not apply: the objective is
    # a surrogate whose coefficients are deliberately not differentiated.)
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, 4, 9, generator=g, dtype=torch.float64)
    t = torch.randn(1, 4, 9, generator=g, dtype=torch.float64)
    a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
    sg_topk_reverse_kl(a, t, topk=9)[0].sum().backward()
    per_token_divergence(b, t, kind="rkl").sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    # a truncated K drops exactly the mass-pushing term: grad = full-KL-gradient restricted to K, not the gradient
    # of the truncated KL (which would add sum_{v in K} S grad log S = grad S(K))
    c = s.clone().requires_grad_()
    sg_topk_reverse_kl(c, t, topk=3)[0].sum().backward()
    d = s.clone().requires_grad_()
    ls, lt = torch.log_softmax(d, -1), torch.log_softmax(t, -1)
    idx = s.topk(3, -1).indices
    trunc_kl = (ls.gather(-1, idx).exp() * (ls.gather(-1, idx) - lt.gather(-1, idx))).sum()
    mass = ls.gather(-1, idx).exp().sum()
    (g_kl,) = torch.autograd.grad(trunc_kl, d, retain_graph=True)
    (g_mass,) = torch.autograd.grad(mass, d)
    torch.testing.assert_close(c.grad, g_kl - g_mass)


@pytest.mark.parametrize("support", ["full", "teacher_topk", "student_topk_tail"])
def test_teacher_support_entropy_matches_its_definition(support):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    H = teacher_support_entropy(s, t, support=support, topk=4, temperature=0.7, lengths_B=torch.tensor([3, 2]))
    lt = torch.log_softmax(t / 0.7, -1)
    if support == "full":
        lp = lt
    elif support == "teacher_topk":
        lp = torch.log_softmax(t.gather(-1, t.topk(4, -1).indices) / 0.7, -1)
    else:  # SDPO's tail bucket: [T at the student's top 4, 1 - their mass]
        top = lt.gather(-1, s.topk(4, -1).indices)
        lp = torch.cat([top, torch.log1p(-top.exp().sum(-1, keepdim=True))], -1)
    ref = -(lp.exp() * lp).sum(-1)
    ref[1, 2] = 0.0  # beyond row 1's length
    torch.testing.assert_close(H, ref, atol=1e-5, rtol=1e-5)
    # uniform teacher over V = 10: full entropy ln 10
    assert float(teacher_support_entropy(s[:1, :1], torch.zeros(1, 1, 10))[0, 0]) == pytest.approx(math.log(10))
