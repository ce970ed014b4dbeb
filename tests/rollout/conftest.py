"""A scripted engine driving the real loop (`sposd.train.train`) with a stand-in learner: what the loop asks of its
rollout engine, in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONF = Path(__file__).resolve().parents[2] / "conf"


class _Learner:
    def __init__(self):
        self.module = torch.nn.Linear(2, 2)

    def train_step(self, samples, *, max_len):
        return {"loss/total": 0.5, "actor/grad_norm": 1.0}

    def save_hf(self, out_dir, *, tokenizer=None):
        return None


@pytest.fixture
def run_loop(tiny_model_dir, tmp_path):
    """run_loop(*overrides, name=...) -> the ScriptedEngine after a `train()` on the tiny model's tokenizer."""
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from sposd.config import register_configs, register_resolvers, to_object
    from sposd.rollout.fake import ScriptedEngine
    from sposd.train import train

    register_resolvers()
    register_configs()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = ["hardware=cpu", "logger=jsonl", "train.checkpoint.on_exit=false", "train.checkpoint.every=0",
            f"model.path={tiny_model_dir}", "prompts_per_step=2", "algo.group_size=2",
            "heldout_eval=false"]  # fmt: skip

    def run(*overrides, name="run"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = to_object(compose("train", overrides=[*base, *overrides]))
        engine = ScriptedEngine(lambda p, i: f"\\boxed{{{p.answer if i == 0 else 'x'}}}", lambda s: tok(s)["input_ids"])
        train(cfg, tmp_path / name, engine=engine, learner=_Learner())
        return cfg, engine

    return run
