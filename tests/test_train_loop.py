"""The loop's logic with a scripted engine and a recording learner (no vLLM, no DeepSpeed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sposd.config import register_configs, register_resolvers, to_object
from sposd.rollout.fake import ScriptedEngine
from sposd.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()
register_configs()


class RecordingLearner:
    """Stands in for DeepSpeedLearner: keeps what it was asked to learn from."""

    def __init__(self):
        self.module = torch.nn.Linear(2, 2)
        self.batches = []

    def train_step(self, samples, *, max_len):
        self.batches.append(samples)
        return {"loss/total": 0.5, "actor/grad_norm": 1.0}

    def save_hf(self, out_dir, *, tokenizer=None):
        return None


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=["hardware=cpu", "logger=jsonl", *overrides]))


def _answer_script(n_right):
    """Completion i of each group is right for i < n_right (the toy answer is in the prompt record)."""
    return lambda p, i: f"{p.answer}. \\boxed{{{p.answer if i < n_right else 'x'}}}"


@pytest.fixture
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loop_writes_contract_and_feeds_advantages(tiny_model_dir, tok, tmp_path):
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "num_steps=3",
        "prompts_per_step=4",
        "algo.group_size=4",
        "heldout_eval=false",
        "save_samples_every=2",
    )
    engine = ScriptedEngine(_answer_script(1), lambda s: tok(s)["input_ids"])
    learner = RecordingLearner()
    train(cfg, tmp_path, resolved_config={"x": 1}, engine=engine, learner=learner)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # 1 of 4 right in every group: reward mean 0.25, every group mixed
    assert all(r["reward/mean"] == 0.25 and r["groups/mixed_frac"] == 1.0 for r in rows)
    assert engine.weight_loads == 3  # synced after every step
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_1.jsonl", "step_2.jsonl"]
    # GRPO: rewards [1,0,0,0] -> mean .25, unbiased std .5 -> advantages [1.5, -.5, -.5, -.5]
    advs = [s.adv for s in learner.batches[0][:4]]
    assert advs == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "summary.json").exists()


def test_dynamic_sampling_refills_until_enough_mixed_groups(tiny_model_dir, tok, tmp_path):
    # Alternate calls: all-right groups (filtered out) then mixed groups: DAPO must generate twice per step.
    calls = {"n": 0}

    def script(p, i):
        return _answer_script(4 if (calls["n"] // 8) % 2 == 0 else 2)(p, i)

    def encode(s):
        calls["n"] += 1
        return tok(s)["input_ids"]

    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=dapo",
        "num_steps=1",
        "prompts_per_step=2",
        "algo.group_size=4",
        "heldout_eval=false",
    )
    engine = ScriptedEngine(script, encode)
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=engine, learner=learner)
    assert engine.generate_calls == [(2, 4), (2, 4)]
    assert len(learner.batches[0]) == 8  # the two mixed groups only
    assert all(s.adv != 0 for s in learner.batches[0])
