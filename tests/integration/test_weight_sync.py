"""Real stack, one rank: a DeepSpeed ZeRO-3 step on the tiny model, bucketed sync into a real vLLM engine.

After the step, the log-probs vLLM reports for a fixed completion must equal the learner's (fp32 on CPU,
max abs diff <= 1e-4) and differ from the pre-step ones. The tiny model ties its embeddings (like Qwen3-1.7B
and 4B), which is exactly the case where a naive in-place reload leaves vLLM's lm_head stale.
"""

from __future__ import annotations

import pytest
import torch

from sposd.learner.batching import LearnerSample, collate

pytestmark = pytest.mark.integration

PROMPT = [1, 5, 6, 7, 8]


class _Optim:
    lr, weight_decay, betas, eps = 1e-2, 0.0, [0.9, 0.999], 1e-8
    warmup_steps, schedule, min_lr_ratio, grad_clip = 0, "constant", 0.0, 1.0


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    from transformers import AutoConfig

    from sposd.algos import get_algo
    from sposd.algos.config import AlgoCfg
    from sposd.learner.learner import DeepSpeedLearner
    from sposd.rollout.vllm_engine import VLLMEngine

    assert AutoConfig.from_pretrained(tiny_model_dir).tie_word_embeddings
    algo = get_algo("grpo")(AlgoCfg(name="grpo"))
    learner = DeepSpeedLearner(
        str(tiny_model_dir),
        algo=algo,
        optim=_Optim,
        total_steps=10,
        device="cpu",
        dtype="float32",
        zero_stage=3,
        micro_batch_tokens=64,
        pad_id=0,
    )
    engine = VLLMEngine(str(tiny_model_dir), dtype="float32", max_model_len=128, seed=0)
    yield learner, engine
    engine.close()


def _learner_logp(learner, prompt, completion):
    with torch.no_grad():
        return learner._logp(learner.engine, collate([LearnerSample(prompt, completion, 0.0)], pad_id=0))[0]


def test_vllm_matches_learner_before_and_after_a_step(stack):
    from sposd.rollout.base import SamplingCfg
    from sposd.sync.weights import push_weights
    from sposd.types import Prompt

    learner, engine = stack
    group = engine.generate(
        [Prompt(id="p", problem="", prompt_ids=PROMPT, answer="")], n=4, sampling=SamplingCfg(max_new_tokens=12)
    )[0]
    comp = group.completions[0].token_ids
    v0 = torch.tensor(engine.sequence_logprobs(PROMPT, comp))
    l0 = _learner_logp(learner, PROMPT, comp)
    assert (v0 - l0).abs().max() <= 1e-4
    # the rollout log-probs vLLM reported while sampling are the same numbers
    torch.testing.assert_close(torch.tensor(group.completions[0].logprobs), l0, atol=1e-4, rtol=0)

    samples = [
        LearnerSample(PROMPT, c.token_ids, adv, rollout_logprobs=c.logprobs)
        for c, adv in zip(group.completions, [1.5, -0.5, -0.5, -0.5], strict=True)
    ]
    metrics = learner.train_step(samples, max_len=12)
    assert metrics["actor/rollout_logp_abs_diff"] < 1e-4  # learner and vLLM agreed before the update
    assert engine.loads_in_place is False  # the CPU backend repacks: copies into the layerwise reload
    stats = push_weights(learner.module, engine, bucket_bytes=16 << 10)  # many small buckets
    assert stats["sync/buckets"] > 3

    v1 = torch.tensor(engine.sequence_logprobs(PROMPT, comp))
    l1 = _learner_logp(learner, PROMPT, comp)
    assert (v1 - l1).abs().max() <= 1e-4, "vLLM samples from stale weights after sync"
    assert (v1 - v0).abs().max() > 1e-3, "the step did not change the policy"
    # the positively-advantaged completion became more likely
    assert l1.sum() > l0.sum()


def test_export_is_loadable_by_transformers_and_matches(stack, tmp_path):
    from transformers import AutoModelForCausalLM

    learner, _ = stack
    out = learner.save_hf(tmp_path / "final")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([PROMPT + [9, 10, 11]])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, len(PROMPT) - 1 : -1], -1).gather(-1, ids[0, len(PROMPT) :, None])
    torch.testing.assert_close(lp.squeeze(-1), _learner_logp(learner, PROMPT, [9, 10, 11]), atol=1e-5, rtol=0)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
