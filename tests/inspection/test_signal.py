"""`sposd.inspect.signal`: the per-position values it records are the distillation loss's own (sposd/algos/distill).

- Hand-computed: one position, V = 2, forward KL with and without an element clip.
- Parity with the loss: for each configuration, the loss of `DistillTerm` with a one-hot token weight at t (and a
  normaliser of 1) is coef x the recorded D_t, and its "distill/clipped_sum" the recorded clip count.
"""

from __future__ import annotations

import math

import pytest
import torch

from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch
from sposd.algos.config import DistillCfg
from sposd.algos.distill.term import DistillTerm
from sposd.inspect.signal import per_position_signal
from sposd.ops.fused import HiddenLogits


def _term(**kw) -> DistillTerm:
    return DistillTerm(DistillCfg(coef=1.0, context="reference_solution", **kw), temperature=1.0)


def test_forward_kl_at_one_position_by_hand():
    # teacher logits (0, 0) -> T = (0.5, 0.5); student (ln 3, 0) -> S = (0.75, 0.25)
    # KL(T || S) = 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25) = -0.202733 + 0.346574 = 0.143841
    # element clip 0.05: the second term 0.346574 > 0.05 -> 0.05; D = -0.202733 + 0.05 = -0.152733, one entry clipped
    S = torch.tensor([[[math.log(3.0), 0.0]]])
    T_ = torch.zeros(1, 1, 2)
    tokens, lengths, w = torch.tensor([[0]]), torch.tensor([1]), torch.tensor([0.5])
    plain = per_position_signal(_term(divergence="fkl"), S, T_.clone(), tokens, lengths, w, topk=2)
    torch.testing.assert_close(plain["div_DT"], torch.tensor([[0.143841]]), atol=1e-6, rtol=0)
    assert plain["clipped_DT"].item() == 0.0 and plain["weight_DT"].item() == 0.5
    torch.testing.assert_close(plain["p_student_DT"], torch.tensor([[0.75]]))
    torch.testing.assert_close(plain["p_teacher_DT"], torch.tensor([[0.5]]))
    assert plain["student_top_DTK"].tolist() == [[[0, 1]]]
    torch.testing.assert_close(plain["student_topp_DTK"], torch.tensor([[[0.75, 0.25]]]))
    clip = per_position_signal(
        _term(divergence="fkl", clip_max=0.05, clip_mode="element"), S, T_.clone(), tokens, lengths, w, topk=2
    )
    torch.testing.assert_close(clip["div_DT"], torch.tensor([[-0.152733]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(clip["div_raw_DT"], torch.tensor([[0.143841]]), atol=1e-6, rtol=0)
    assert clip["clipped_DT"].item() == 1.0


CONFIGS = {
    "opsd_v3": dict(divergence="fkl", clip_max=0.05, clip_mode="element"),
    "jsd_token_clip": dict(divergence="jsd", beta=0.5, clip_max=0.02, clip_mode="token", loss_temperature=1.3),
    "rkl_teacher_topk": dict(divergence="rkl", support="teacher_topk", topk=4),
    "student_topk_tail": dict(divergence="fkl", support="student_topk_tail", topk=3),
    "sampled_token": dict(divergence="rkl", sampled_token=True, clip_max=0.5, clip_mode="token"),
    "paint_student_partner": dict(divergence="fkl", interp_gamma=0.3, interp_partner="student", mismatch_q=0.4),
    "entropy_mismatch": dict(divergence="fkl", select="entropy_mismatch", mismatch_q=0.5),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_recorded_values_are_the_losses_per_token_values(name):
    torch.manual_seed(0)
    D, T, H, V = 2, 5, 8, 11
    h = torch.randn(D, T, H)
    W_s, W_t = torch.randn(V, H), torch.randn(V, H)
    tokens = torch.randint(0, V, (D, T))
    lengths, weight = torch.tensor([5, 3]), torch.tensor([1.0, 1.0])
    term = _term(**CONFIGS[name])
    rec = per_position_signal(term, HiddenLogits(h, W_s), HiddenLogits(h, W_t), tokens, lengths, weight)
    zeros = torch.zeros(D, T)
    sel = (rec["weight_DT"] > 0).float()

    def loss_with(token_weight):
        db = DistillBatch(
            student_logits_DTV=HiddenLogits(h, W_s),
            teacher_logits_DTV=HiddenLogits(h, W_t),
            tokens_DT=tokens,
            lengths_D=lengths,
            weight_D=weight,
            logp_DT=zeros,
            old_logp_DT=zeros,
            token_weight_DT=token_weight,
        )
        return term(PolicyBatch(zeros, zeros, torch.ones(D, T), torch.zeros(D), distill=db), Normalizer(1, 1, 1))

    whole = loss_with(None)  # the selection's positions, their summed D_t and clip counts
    assert whole.metrics["distill/tokens"].item() == sel.sum().item()
    torch.testing.assert_close(whole.metrics["distill/div_sum"], (rec["div_DT"] * sel).sum(), atol=1e-5, rtol=1e-6)
    assert whole.metrics["distill/clipped_sum"].item() == (rec["clipped_DT"] * sel).sum().item()
    if CONFIGS[name].get("sampled_token"):  # its per-token loss is a surrogate of D_t, not D_t: sums only
        return
    for b in range(D):
        for t in range(T):
            onehot = torch.zeros(D, T)
            onehot[b, t] = 1.0
            out = loss_with(onehot)  # coef 1, normaliser 1: the loss is the weighted D_t at (b, t)
            torch.testing.assert_close(out.loss, rec["div_DT"][b, t] * rec["weight_DT"][b, t], atol=1e-6, rtol=1e-6)
