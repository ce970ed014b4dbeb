"""The held-out accuracy moved from `engine.generate` + `grade` to the toy benchmark's `sample_and_grade`
(`engine.generate_stream`): on the real vLLM engine, under the same reseed, both draw the same completions, so the
accuracy of any model is unchanged (parity with the earlier code path)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration  # the real in-process vLLM engine on the tiny model


def test_stream_and_batch_generation_draw_the_same_samples_after_a_reseed(tiny_model_dir):
    from transformers import AutoTokenizer

    from sposd.data.sources import load_records
    from sposd.data.templates import TOY_INSTRUCTION, make_prompt
    from sposd.loop.rollouts import HELDOUT_ROUND, reseed
    from sposd.rollout.base import SamplingCfg
    from sposd.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [
        make_prompt(r, tok, instruction=TOY_INSTRUCTION)
        for r in load_records(kind="toy", split="heldout", limit=6, seed=0)
    ]
    sampling = SamplingCfg(temperature=1.0, max_new_tokens=12)
    engine = VLLMEngine(str(tiny_model_dir), dtype="float32", max_model_len=512, seed=0)
    try:
        reseed(0, 3, HELDOUT_ROUND, 0)
        batch = {
            g.prompt.id: [c.token_ids for c in g.completions] for g in engine.generate(prompts, n=3, sampling=sampling)
        }
        reseed(0, 3, HELDOUT_ROUND, 0)
        streamed = {
            g.prompt.id: [c.token_ids for c in g.completions]
            for groups in engine.generate_stream(prompts, n=3, sampling=sampling)
            for g in groups
        }
    finally:
        engine.close()
    assert streamed == batch
    assert len({tuple(t) for ids in batch.values() for t in ids}) > 1  # really sampled, not one fixed string
