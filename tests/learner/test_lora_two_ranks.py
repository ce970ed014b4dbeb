"""A LoRA learner on two gloo ranks (the cpu2 path): ZeRO-3 partitions base and adapters across the ranks.

With gradient checkpointing on and every frozen parameter partitioned (the DeepSpeed#8148 / transformers#47254
trap: a recompute finds frozen weights already released), the adapters' gradients equal those without
checkpointing; a training step then moves the adapters on both ranks alike and leaves the base untouched.
"""

from __future__ import annotations

import pytest
from two_ranks import run_ranks

pytestmark = pytest.mark.integration

CODE = """
import deepspeed
from deepspeed.utils import safe_get_full_grad
import sposd.learner.learner as L
from sposd.algos import get_algo
from sposd.algos.config import AlgoCfg, DistillCfg
from sposd.config import LoraCfg
from sposd.learner import passes
from sposd.learner.batching import LearnerSample, collate

real = L.ds_config
def every_param_partitioned(**kw):
    cfg = real(**kw)
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return cfg
L.ds_config = every_param_partitioned

class Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0

ROWS = [([5, 6, 7], [5, 6, 7, 40, 41], [20, 21, 22, 23]), ([9, 10], [9, 10, 60, 61, 62], [33, 34, 35])]
mine = [ROWS[rank]]
samples = [LearnerSample(p, c, 0.0, teacher_prompt_ids=t, distill_weight=1.0, distill_len=len(c),
                         distill_units=float(len(c))) for p, t, c in mine]

def learner(gc):
    torch.manual_seed(0)
    d = DistillCfg(coef=1.0, context="reference_solution", normalize="token_mean", teacher="initial")
    algo = get_algo("opsd")(AlgoCfg(name="opsd", group_size=1, rl_coef=0.0, dual_clip_c=None, distill=d))
    lrn = L.DeepSpeedLearner(MODEL, algo=algo, optim=Optim, total_steps=4, device="cpu", dtype="float32",
                             zero_stage=3, micro_batch_tokens=4096, pad_id=0, lora=LoraCfg(rank=4, alpha=8.0),
                             gradient_checkpointing=gc)
    with torch.no_grad():
        for n, p in lrn.module.named_parameters():
            if ".lora_B." in n:  # give A a gradient (B = 0 at start), the same full tensor on both ranks
                full = torch.randn(p.ds_shape, generator=torch.Generator().manual_seed(len(n)))
                p.ds_tensor.copy_(full.flatten()[rank * p.ds_tensor.numel():][: p.ds_tensor.numel()])
    return lrn

def adapter_grads(lrn):
    mb = collate(samples, pad_id=0)
    h = passes.hidden_states(lrn.engine, mb)
    hh, W, b = passes.policy_head(lrn.engine, h)
    lp = passes.completion_logprobs(passes.logits_of(hh, W, b), mb["completion_ids_BT"],
                                    passes.completion_lengths(mb), temperature=1.0, chunk=64)
    lrn.engine.set_gradient_accumulation_boundary(True)
    lrn.engine.backward(-lp.sum(), scale_wrt_gas=False)
    out = {n: safe_get_full_grad(p).clone() for n, p in lrn.module.named_parameters() if p.requires_grad}
    lrn.engine.optimizer.zero_grad()
    return out

plain = adapter_grads(learner(False))
lrn = learner(True)
ckpt = adapter_grads(lrn)
RESULT["n"] = len(plain)
RESULT["a_grad_sum"] = sum(float(g.abs().sum()) for n, g in plain.items() if ".lora_A." in n)
RESULT["max_diff"] = max(float((plain[n] - ckpt[n]).abs().max()) for n in plain)
RESULT["max_grad"] = max(float(g.abs().max()) for g in plain.values())

def gathered():
    out = {}
    for n, p in lrn.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            out[n] = p.data.detach().clone()
    return out

before = gathered()
m = lrn.train_step(samples, max_len=8)
after = gathered()
frozen = [n for n, p in lrn.module.named_parameters() if not p.requires_grad]
RESULT["base_same"] = all(torch.equal(before[n], after[n]) for n in frozen)
RESULT["adapter_sum"] = sum(float(after[n].double().sum()) for n in after if ".lora_" in n)
RESULT["adapter_moved"] = any(not torch.equal(before[n], after[n]) for n in after if ".lora_A." in n)
RESULT["loss"] = m["loss/total"]
"""


def test_lora_on_two_ranks_checkpointing_matches_and_only_adapters_move(tiny_model_dir, tmp_path):
    r0, r1 = run_ranks(f"MODEL = {str(tiny_model_dir)!r}\n" + CODE, tmp_path)
    for r in (r0, r1):
        assert r["n"] == 56 and r["a_grad_sum"] > 0
        assert r["max_diff"] <= 1e-5 * max(1.0, r["max_grad"]), r
        assert r["base_same"] and r["adapter_moved"]
    assert r0["adapter_sum"] == r1["adapter_sum"]  # both ranks hold the same adapters
