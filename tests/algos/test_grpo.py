import math

import pytest
import torch

from sposd.algos import AlgoCfg, Normalizer, PolicyBatch, get_algo
from sposd.ops.aggregation import aggregate
from sposd.ops.policy_loss import clipped_surrogate, kl_penalty_k3

# The three presets of conf/algo/*.yaml, as AlgoCfg overrides.
PRESETS = {
    "grpo": {},
    "dapo": {"clip_high": 0.28, "loss_agg": "token-mean", "dynamic_sampling": True, "overlong_buffer": 8},
    "dr_grpo": {"adv_std_norm": False, "loss_agg": "seq-mean-token-sum-norm"},
}


def _algo(name, **kw):
    return get_algo(name)(AlgoCfg(name=name, **{**PRESETS[name], **kw}))


def test_needs_ref_only_with_kl():
    assert not _algo("grpo").needs_ref
    assert _algo("grpo", kl_coef=0.1).needs_ref


def test_hand_computed_pg_plus_kl():
    # on-policy, adv 1, token-mean over 2 tokens: pg = mean(-1 * ratio 1) = -1
    # k3 with d = ref - logp = [ln 0.5, 0]: [0.5 - ln 0.5 - 1, 0] = [ln 2 - 0.5, 0]
    # -> token-mean (ln 2 - 0.5) / 2
    # total = rl_coef * pg + kl_coef * kl = 0.5 * -1 + 0.1 * (ln 2 - 0.5) / 2
    algo = _algo("dapo", rl_coef=0.5, kl_coef=0.1)
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    mb = PolicyBatch(
        logp_BT=logp,
        old_logp_BT=logp,
        mask_BT=torch.ones(1, 2),
        adv_B=torch.tensor([1.0]),
        ref_logp_BT=torch.log(torch.tensor([[0.25, 0.25]])),
    )
    out = algo.loss(mb, Normalizer(num_tokens=2, num_seqs=1, max_len=2))
    kl = (math.log(2) - 0.5) / 2
    torch.testing.assert_close(out.loss, torch.tensor(-0.5 + 0.1 * kl))
    torch.testing.assert_close(out.metrics["loss/pg"], torch.tensor(-1.0))
    torch.testing.assert_close(out.metrics["loss/kl"], torch.tensor(kl))
    assert {
        "loss/clip_frac",
        "loss/dual_clip_frac",
        "actor/approx_kl",
        "actor/ratio_mean",
    } <= out.metrics.keys()


def test_kl_term_requires_ref_logps():
    logp = torch.zeros(1, 2)
    mb = PolicyBatch(logp_BT=logp, old_logp_BT=logp, mask_BT=torch.ones(1, 2), adv_B=torch.ones(1))
    with pytest.raises(AssertionError, match="ref_logp_BT"):
        _algo("grpo", kl_coef=0.1).loss(mb, Normalizer(num_tokens=2, num_seqs=1, max_len=2))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_loss_is_rl_coef_surrogate_plus_kl_coef_k3(name):
    torch.manual_seed(0)
    algo = _algo(name, rl_coef=0.7, kl_coef=0.05)
    cfg = algo.cfg
    old, ref = torch.randn(4, 6), torch.randn(4, 6)
    logp = (old + 0.5 * torch.randn(4, 6)).requires_grad_()
    mask, adv = (torch.rand(4, 6) > 0.2).float(), torch.randn(4)
    norm = Normalizer(num_tokens=float(mask.sum()), num_seqs=4, max_len=8)
    kw = {"num_tokens": norm.num_tokens, "num_seqs": norm.num_seqs, "max_len": norm.max_len}
    expected = 0.7 * clipped_surrogate(
        logp,
        old,
        adv,
        mask,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_clip_c=cfg.dual_clip_c,
        agg=cfg.loss_agg,
        **kw,
    ).loss + 0.05 * aggregate(kl_penalty_k3(logp, ref), mask, mode=cfg.loss_agg, **kw)
    out = algo.loss(
        PolicyBatch(logp_BT=logp, old_logp_BT=old, mask_BT=mask, adv_B=adv, ref_logp_BT=ref), norm
    )
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_on_policy_gradient_is_reinforce_per_preset(name):
    # ratio 1 -> d loss / d logp_it = -A_i * m_it * w_i with the aggregation weight w_i:
    # token-mean 1/N, seq-mean-token-mean 1/(n_i S), seq-mean-token-sum-norm 1/(S L)
    algo = _algo(name)
    logp = torch.randn(2, 4, requires_grad=True)
    mask, adv = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]), torch.tensor([2.0, -1.0])
    norm = Normalizer(num_tokens=5, num_seqs=2, max_len=8)
    algo.loss(
        PolicyBatch(logp_BT=logp, old_logp_BT=logp.detach(), mask_BT=mask, adv_B=adv), norm
    ).loss.backward()
    w = {
        "token-mean": torch.full((2, 1), 1 / 5),
        "seq-mean-token-mean": torch.tensor([[1 / 8], [1 / 2]]),
        "seq-mean-token-sum-norm": torch.full((2, 1), 1 / 16),
    }[algo.cfg.loss_agg]
    torch.testing.assert_close(logp.grad, -adv[:, None] * mask * w)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_loss_and_metrics_add_up_over_micro_batches(name):
    # the learner sums loss and metrics over micro-batches (and ranks) with one global Normalizer
    torch.manual_seed(1)
    algo = _algo(name, kl_coef=0.1)
    B, T = 6, 7
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    old, ref = torch.randn(B, T), torch.randn(B, T)
    logp, adv = old + 0.4 * torch.randn(B, T), torch.randn(B)
    norm = Normalizer(num_tokens=float(mask.sum()), num_seqs=B, max_len=T)

    def run(rows):
        w = int(lengths[rows].max())
        return algo.loss(
            PolicyBatch(
                logp_BT=logp[rows, :w],
                old_logp_BT=old[rows, :w],
                mask_BT=mask[rows, :w],
                adv_B=adv[rows],
                ref_logp_BT=ref[rows, :w],
            ),
            norm,
        )

    whole = run(list(range(B)))
    parts = [run(rows) for rows in ([0, 4], [1, 3, 5], [2])]
    torch.testing.assert_close(sum(p.loss for p in parts), whole.loss)
    for k, v in whole.metrics.items():
        assert float(sum(float(p.metrics[k]) for p in parts)) == pytest.approx(float(v), abs=1e-6), k
