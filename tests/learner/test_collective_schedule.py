"""Two gloo ranks with deliberately uneven work issue the same collectives, in the same order.

Each rank records every torch.distributed collective it calls (name and tensor sizes), wrapped before DeepSpeed
captures the functions, while one `train_step` runs per algorithm family: distillation on every position (opsd),
TIP with a token pre-pass and a separate teacher (tip, frozen initial teacher), K scoring passes (cepo), and
GRPO with a KL reference and two mini-batches (frozen old and reference log-probs). Rank 0 has several
micro-batches with and without distilled rows; rank 1 has one undistilled sample, or none at all. A missing
pass on one rank would hang the job (the test's timeout) or show up here as different sequences. Checked by
sabotage: with `run_empty` skipping its output-layer gathers, the ranks hang and the test fails on its timeout.
Balancing is off here (it would even the work out); its own check reassigns the same uneven samples.
"""

from __future__ import annotations

import pytest
from two_ranks import run_ranks

pytestmark = pytest.mark.integration

WORKER = """
import torch.distributed as tdist
import torch.distributed.distributed_c10d as c10d

LOG = []
NAMES = ["all_reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base", "reduce_scatter_tensor",
         "_reduce_scatter_base", "reduce_scatter", "broadcast", "all_gather_object", "barrier", "reduce",
         "all_reduce_coalesced", "all_to_all_single", "gather", "scatter", "broadcast_object_list"]

def recording(name, f):
    def call(*args, **kwargs):
        sizes = [x.numel() for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
        LOG.append(f"{name}{sizes}")
        return f(*args, **kwargs)
    return call

for mod in (tdist, c10d):  # before DeepSpeed keeps references to them
    for name in NAMES:
        if hasattr(mod, name):
            setattr(mod, name, recording(name, getattr(mod, name)))

from sposd.algos import get_algo
from sposd.algos.config import AdvModCfg, AlgoCfg, DistillCfg, TipCfg
from sposd.learner.batching import LearnerSample
from sposd.learner.learner import DeepSpeedLearner

class Optim:
    lr, weight_decay, betas, eps = 1e-3, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0

def distill(**kw):
    return DistillCfg(coef=1.0, context="reference_solution", normalize="token_mean", **kw)

CONFIGS = {
    "opsd": AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=distill(teacher="current")),
    "tip": AlgoCfg(name="tip", group_size=1, rl_coef=0.0, dual_clip_c=None,
                   distill=distill(teacher="initial", select="tip", tip=TipCfg(ratio=0.5), divergence="rkl")),
    "cepo": AlgoCfg(name="cepo", adv_mod=AdvModCfg(kind="cepo")),
    "grpo_kl": AlgoCfg(name="grpo", kl_coef=0.1, num_minibatches=2),
}

def sample(p, c, t=None, adv=1.0):
    d = {} if t is None else dict(teacher_prompt_ids=t, distill_weight=1.0, distill_len=len(c),
                                  distill_units=float(len(c)))
    return LearnerSample(p, c, adv, score_prompt_ids=[p + [70], p + [71, 72]], **d)

RANK0 = [sample([5, 6, 7], [20, 21, 22, 23], t=[5, 6, 7, 40, 41]),
         sample([5, 8], [30, 31]),
         sample([9, 10, 11, 12], [33, 34, 35, 36, 37, 38], t=[9, 60, 61], adv=-1.0),
         sample([4], [50, 51, 52, 53, 54, 55, 56, 57, 58], adv=0.5)]
RANK1 = {"opsd": [sample([5], [44, 45])], "tip": [], "cepo": [sample([5], [44, 45])], "grpo_kl": [sample([5], [44])]}

for name, cfg in CONFIGS.items():
    learner = DeepSpeedLearner(TINY, algo=get_algo(cfg.name)(cfg), optim=Optim, total_steps=4, device="cpu",
                               dtype="float32", zero_stage=3, micro_batch_tokens=16, pad_id=0,
                               balance_ranks=False)
    start = len(LOG)
    samples = RANK0 if rank == 0 else RANK1[name]
    metrics = learner.train_step(samples, max_len=16)
    RESULT[name] = {"log": LOG[start:], "loss": metrics["loss/total"]}
    if name == "grpo_kl":
        mine = learner._rebalanced(samples)
        RESULT["balanced_tokens"] = sum(len(s.prompt_ids) + len(s.completion_ids) for s in mine)
        RESULT["balanced_ids"] = sorted(tuple(s.completion_ids) for s in mine)
    del learner
"""


def test_uneven_ranks_issue_identical_collectives(tiny_model_dir, tmp_path):
    out = run_ranks(f"TINY = {str(tiny_model_dir)!r}\n" + WORKER, tmp_path, timeout=600)
    for name in ("opsd", "tip", "cepo", "grpo_kl"):
        log0, log1 = out[0][name]["log"], out[1][name]["log"]
        gathers = [c for c in log0 if c.startswith(("all_gather_into_tensor", "_all_gather_base"))]
        assert len(gathers) > 20, (name, log0[:20])  # ZeRO-3's parameter gathers are seen
        assert log0 == log1, f"{name}: the ranks' collectives differ (lengths {len(log0)} vs {len(log1)})"
        assert out[0][name]["loss"] == out[1][name]["loss"]  # metrics are summed over ranks: the same number
        assert out[0][name]["loss"] == out[0][name]["loss"]  # finite
    # Balanced: rank 0 held samples of 7, 4, 10, 10 tokens (prompt + completion), rank 1 one of 2. Longest first to
    # the lighter rank (ties to rank 0): 10 -> r0 (10, 0), 10 -> r1 (10, 10), 7 -> r0 (17, 10), 4 -> r1 (17, 14),
    # 2 -> r1 (17, 16).
    assert (out[0]["balanced_tokens"], out[1]["balanced_tokens"]) == (17, 16)
    ids0, ids1 = ({tuple(c) for c in r["balanced_ids"]} for r in out)
    assert not ids0 & ids1 and len(ids0) + len(ids1) == 5  # every sample on exactly one rank
