"""TIP's token statistics and sampling, the Q3 rule, SRPO's entropy weights (hand-computed + parity)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sposd.ops.token_selection import (
    entropy_token_weights,
    q3_mask,
    q3_thresholds,
    tip_num_kept,
    tip_select,
    tip_token_stats,
    tip_weights,
)


def test_tip_stats_hand_computed():
    # position 0: uniform student over V = 4 -> h = ln 4 / ln 4 = 1; teacher equal -> j = 0
    # position 1: student one-hot-ish [1, 0, 0, 0], teacher [0, 1, 0, 0] (disjoint supports) -> JSD = ln 2 -> j = 1
    big = 60.0
    s = torch.tensor([[0.0, 0.0, 0.0, 0.0], [big, 0.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, big, 0.0, 0.0]])
    h, j = tip_token_stats(s, t)
    torch.testing.assert_close(h, torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(j, torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    # scale multiplies both
    h2, j2 = tip_token_stats(s, t, scale=2.0)
    torch.testing.assert_close(h2, 2 * h) and torch.testing.assert_close(j2, 2 * j)


def _hjsang_stats(s_NV, t_NV, jsd_topk=0):
    """Written from the public formula (losses.py `_compute_per_token_entropy_and_jsd`), one position at a time."""
    out_h, out_j = [], []
    V = s_NV.shape[1]
    for n in range(s_NV.shape[0]):
        s_lp = F.log_softmax(s_NV[n], -1)
        out_h.append(float(-(s_lp.exp() * s_lp).sum()) / math.log(V))
        sl, tl = s_NV[n], t_NV[n]
        if 0 < jsd_topk < V:
            idx = tl.topk(jsd_topk).indices
            sl, tl = sl[idx], tl[idx]
        sp, tp = F.softmax(sl, -1), F.softmax(tl, -1)
        m = 0.5 * (sp + tp)
        jsd = 0.5 * float((sp * (sp.log() - m.log())).sum()) + 0.5 * float((tp * (tp.log() - m.log())).sum())
        out_j.append(max(jsd, 0.0) / math.log(2))
    return torch.tensor(out_h), torch.tensor(out_j)


@pytest.mark.parametrize("jsd_topk", [0, 3])
def test_tip_stats_parity_with_the_public_formula(jsd_topk):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 11, generator=g), torch.randn(9, 11, generator=g)
    h, j = tip_token_stats(s, t, jsd_topk=jsd_topk, chunk_tokens=4)
    rh, rj = _hjsang_stats(s, t, jsd_topk)
    torch.testing.assert_close(h, rh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(j, rj, atol=1e-6, rtol=1e-5)


def test_tip_weights_and_kept_count():
    h, j = torch.tensor([0.5, 0.0, 1.0]), torch.tensor([0.25, 1.0, 0.0])
    # alpha 2, gamma 1: [.25 * .25, 1e-16 * 1, 1 * 1e-8]
    torch.testing.assert_close(tip_weights(h, j, alpha=2.0, gamma=1.0), torch.tensor([0.0625, 1e-16, 1e-8]))
    torch.testing.assert_close(tip_weights(h, j, alpha=1.0, gamma=0.0), torch.tensor([0.5, 1e-8, 1.0]))
    # k = max(1, floor(ratio n)), all when it reaches n, 0 of 0, at most the candidates
    assert [tip_num_kept(n, ratio=0.5) for n in (0, 1, 3, 10)] == [0, 1, 1, 5]
    assert tip_num_kept(10, ratio=1.0) == 10 and tip_num_kept(10, ratio=0.5, num_candidates=2) == 2


def test_tip_select_respects_ratio_candidates_and_weights():
    w = torch.ones(10)
    for ratio, k in ((1.0, 10), (0.5, 5), (0.1, 1), (0.05, 1)):
        assert int(tip_select(w, ratio=ratio).sum()) == k
    # draws follow the weights: a position with all the mass is always kept when one is drawn
    w = torch.full((10,), 1e-8)
    w[7] = 1.0
    for seed in range(20):
        keep = tip_select(w, ratio=0.1, generator=torch.Generator().manual_seed(seed))
        assert keep.nonzero().flatten().tolist() == [7]
    # only candidates are drawn; fewer candidates than k -> all candidates
    cand = torch.zeros(10, dtype=torch.bool)
    cand[[1, 4]] = True
    assert tip_select(torch.ones(10), ratio=0.5, candidates_N=cand).nonzero().flatten().tolist() == [1, 4]
    one = tip_select(torch.ones(10), ratio=0.1, candidates_N=cand).nonzero().flatten().tolist()
    assert len(one) == 1 and one[0] in (1, 4)
    with pytest.raises(ValueError, match="ratio"):
        tip_select(w, ratio=0.0)


def test_q3_rule_low_entropy_high_divergence():
    h = torch.tensor([0.1, 0.2, 0.8, 0.9, 0.15])
    j = torch.tensor([0.96, 0.1, 0.95, 0.2, 0.5])
    # median of h (sorted .1 .15 .2 .8 .9) = .2; 80th percentile of j (sorted .1 .2 .5 .95 .96): index .8 * 4 = 3.2
    # -> .95 + .2 (.96 - .95) = .952
    h_max, j_min = q3_thresholds(h, j)
    assert h_max == pytest.approx(0.2) and j_min == pytest.approx(0.952)
    # h < .2 and j > .952: only position 0 (2 diverges but is high-entropy; 4 is confident but agrees)
    assert q3_mask(h, j, h_max=h_max, j_min=j_min).tolist() == [True, False, False, False, False]


def test_entropy_token_weights():
    # exp(-H / tau): H = 0 -> 1, H = ln 2 at tau 1 -> .5, at tau 2 -> 1/sqrt 2
    w = entropy_token_weights(torch.tensor([0.0, math.log(2)]), tau=1.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(entropy_token_weights(torch.tensor([math.log(2)]), tau=2.0), torch.tensor([2**-0.5]))
    with pytest.raises(ValueError, match="tau"):
        entropy_token_weights(torch.zeros(1), tau=0.0)
