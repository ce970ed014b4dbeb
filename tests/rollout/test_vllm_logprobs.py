"""vLLM returns the log-probs of the distribution it sampled from (processed_logprobs): log softmax(z / T) at the
rollout temperature, which is what the learner computes, so the stale-weight check compares like with like."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

TEMPERATURE = 0.5


def test_sampled_logprobs_are_temperature_scaled_like_the_learners(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from sposd.rollout.base import SamplingCfg
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.types import Prompt

    prompt = [1, 5, 6, 7, 8]
    engine = VLLMEngine(str(tiny_model_dir), dtype="float32", max_model_len=64, seed=0)
    try:
        sampling = SamplingCfg(temperature=TEMPERATURE, max_new_tokens=12, seed=3)
        group = engine.generate([Prompt(id="p", problem="", answer="", prompt_ids=prompt)], n=2, sampling=sampling)[0]
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for c in group.completions:
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]  # the logits that predicted each completion token
        tokens = torch.tensor(c.token_ids)
        scaled = torch.log_softmax(logits / TEMPERATURE, -1)[torch.arange(len(tokens)), tokens]
        raw = torch.log_softmax(logits, -1)[torch.arange(len(tokens)), tokens]
        vllm = torch.tensor(c.logprobs)
        assert (vllm - scaled).abs().max() < 1e-4
        assert (vllm - raw).abs().max() > 1e-2  # raw log-probs (vLLM's default) would not match
