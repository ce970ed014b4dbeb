"""Real stack, one rank: a LoRA policy (ZeRO-3) synced into a real vLLM engine as merged weights.

At each of two steps the rollout log-probs vLLM reports equal the learner's (the stale-weight alarm
`actor/rollout_logp_abs_diff` < 1e-4, fp32 on CPU) and, after the merged sync, vLLM's log-probs of a fixed
completion equal the learner's LoRA policy's (<= 1e-4) and moved. The merged export loads in transformers.
"""

from __future__ import annotations

import pytest
import torch

from sposd.config import LoraCfg
from sposd.learner.batching import LearnerSample, collate

pytestmark = pytest.mark.integration

PROMPT = [1, 5, 6, 7, 8]


class _Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg
    from sposd.learner.learner import DeepSpeedLearner
    from sposd.rollout.vllm_engine import VLLMEngine

    learner = DeepSpeedLearner(str(tiny_model_dir), algo=get_algo("grpo")(AlgoCfg(name="grpo")), optim=_Optim,
                               total_steps=10, device="cpu", dtype="float32", zero_stage=3, micro_batch_tokens=64,
                               pad_id=0, lora=LoraCfg(rank=8, alpha=16.0))
    engine = VLLMEngine(str(tiny_model_dir), dtype="float32", max_model_len=128, seed=0)
    yield learner, engine
    engine.close()


def _learner_logp(learner, prompt, completion):
    with torch.no_grad():
        return learner._logp(learner.engine, collate([LearnerSample(prompt, completion, 0.0)], pad_id=0))[0]


def test_vllm_matches_the_lora_learner_after_each_of_two_steps(stack):
    from sposd.rollout.base import SamplingCfg
    from sposd.sync.weights import push_weights
    from sposd.types import Prompt

    learner, engine = stack
    fixed = None
    previous = None
    for _ in range(2):
        group = engine.generate(
            [Prompt(id="p", problem="", prompt_ids=PROMPT, answer="")], n=4, sampling=SamplingCfg(max_new_tokens=12)
        )[0]
        fixed = fixed or group.completions[0].token_ids
        samples = [
            LearnerSample(PROMPT, c.token_ids, adv, rollout_logprobs=c.logprobs)
            for c, adv in zip(group.completions, [1.5, -0.5, -0.5, -0.5], strict=True)
        ]
        metrics = learner.train_step(samples, max_len=12)
        assert metrics["actor/rollout_logp_abs_diff"] < 1e-4  # vLLM sampled from the learner's current policy
        stats = push_weights(learner.module, engine, bucket_bytes=16 << 10)  # many buckets: LoRA units stay whole
        assert stats["sync/buckets"] > 3
        v = torch.tensor(engine.sequence_logprobs(PROMPT, fixed))
        lp = _learner_logp(learner, PROMPT, fixed)
        assert (v - lp).abs().max() <= 1e-4, "vLLM samples from stale (or unmerged) weights after sync"
        if previous is not None:
            assert (v - previous).abs().max() > 1e-3, "the step did not change the policy"
        previous = v


def test_merged_export_is_a_plain_hf_model_matching_the_policy(stack, tmp_path):
    from transformers import AutoModelForCausalLM

    learner, _ = stack
    out = learner.save_hf(tmp_path / "final")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in n or "base_layer" in n for n, _ in model.named_parameters())
    ids = torch.tensor([PROMPT + [9, 10, 11]])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, len(PROMPT) - 1 : -1], -1).gather(-1, ids[0, len(PROMPT) :, None])
    torch.testing.assert_close(lp.squeeze(-1), _learner_logp(learner, PROMPT, [9, 10, 11]), atol=1e-5, rtol=0)
