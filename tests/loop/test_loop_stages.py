"""The loop's stages with a scripted engine and stand-in learners (no vLLM, no DeepSpeed): the held-out accuracy
as the toy benchmark's evaluation, and a resume through `TrainState`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sposd.config import register_configs, register_resolvers, to_object
from sposd.rollout.fake import ScriptedEngine
from sposd.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"
register_resolvers()
register_configs()


class _Config:
    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text("{}")


class CheckpointingLearner:
    """A stand-in learner with state: one weight, moved by every step, saved and restored."""

    def __init__(self):
        self.module = torch.nn.Linear(1, 1, bias=False)
        self.module.config = _Config()
        self.steps, self.batches = 0, []

    def train_step(self, samples, *, max_len):
        self.steps += 1
        self.batches.append(samples)
        return {"loss/total": float(self.steps), "actor/lr": 1e-3 * self.steps}

    def save_state(self, ckpt_dir):
        torch.save({"steps": self.steps}, Path(ckpt_dir) / "learner.pt")

    def load_state(self, ckpt_dir):
        self.steps = torch.load(Path(ckpt_dir) / "learner.pt")["steps"]

    def save_hf(self, out_dir, *, tokenizer=None):
        return None


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = ["hardware=cpu", "logger=jsonl", "prompts_per_step=2", "algo=grpo", "algo.group_size=4"]
        return to_object(compose("train", overrides=[*base, *overrides]))


@pytest.fixture
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _engine(tok, n_right):
    return ScriptedEngine(lambda p, i: f"\\boxed{{{p.answer if i < n_right else 'x'}}}", lambda s: tok(s)["input_ids"])


def test_heldout_accuracy_is_the_toy_benchmarks_evaluation(tiny_model_dir, tok, tmp_path):
    from sposd.data.templates import make_prompt

    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "num_steps=2",
        "heldout_every=1",
        "data.num_heldout=6",
        "heldout_samples=4",
        "train.checkpoint.on_exit=false",
        "train.checkpoint.every=0",
    )
    engine = _engine(tok, 1)  # 1 of every 4 samples right -> accuracy 0.25
    prompts = []
    generate = engine.generate

    def recording(ps, *, n, sampling):
        prompts.append((list(ps), n))
        return generate(ps, n=n, sampling=sampling)

    engine.generate = recording
    summary = train(cfg, tmp_path, engine=engine, learner=CheckpointingLearner())
    assert summary["base_accuracy"] == 0.25 and summary["trained_accuracy"] == 0.25
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/heldout_accuracy"] for r in rows] == [0.25, 0.25]
    # the held-out problems are the toy benchmark's (data.num_heldout of them), each prompted as in training
    base, n = prompts[0]
    assert n == 4 and len(base) == 6 and all(p.meta["benchmark"] == "toy" for p in base)
    from sposd.data.sources import load_records

    records = load_records(kind="toy", split="heldout", limit=6, seed=cfg.seed)
    trained = [make_prompt(r, tok, instruction=cfg.data.instruction).prompt_ids for r in records]
    assert [p.prompt_ids for p in base] == trained


def test_resume_restores_the_loop_state_and_says_from_which_step(tiny_model_dir, tok, tmp_path, capsys):
    common = [f"model.path={tiny_model_dir}", "heldout_eval=false", "train.checkpoint.every=1", "save_final=false"]
    straight = tmp_path / "straight"
    train(_cfg(*common, "num_steps=3"), straight, engine=_engine(tok, 2), learner=CheckpointingLearner())

    run = tmp_path / "run"
    train(_cfg(*common, "num_steps=2"), run, engine=_engine(tok, 2), learner=CheckpointingLearner())
    capsys.readouterr()
    learner = CheckpointingLearner()
    summary = train(_cfg(*common, "num_steps=3"), run, engine=_engine(tok, 2), learner=learner)
    assert "resuming from step 2" in capsys.readouterr().out
    assert summary["resumed_from"].endswith("step_2") and learner.steps == 3  # restored to 2, then one more
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    computed = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "sync/"))}  # noqa: E731
    assert computed(rows(run)[-1]) == computed(rows(straight)[-1])  # same prompts (sampler), same first_len
    from sposd.checkpoint import TrainState

    state = TrainState.restore(
        run / "checkpoints" / "step_3", learner=CheckpointingLearner(), sampler=_Sampler(), algo=_Algo(), rank=0
    )
    assert (state.step, state.first_len, state.eval_history) == (3, rows(run)[0]["response/mean_len"], [])


class _Sampler:
    def load_state_dict(self, state):
        self.state = state


class _Algo:
    def load_state_dict(self, state):
        self.state = state
