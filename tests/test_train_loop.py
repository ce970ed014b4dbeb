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
        # the stand-in learner has no state to checkpoint (tests/integration/test_resume.py covers checkpoints)
        base = ["hardware=cpu", "logger=jsonl", "train.checkpoint.on_exit=false", "train.checkpoint.every=0"]
        return to_object(compose("train", overrides=[*base, *overrides]))


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


def test_ssopd_teacher_sees_the_witness_and_scores_the_longest_wrong(tiny_model_dir, tok, tmp_path):
    # completion 0 right, 1..3 wrong with equal lengths: witness #0, longest wrong #1 (tie -> lowest index);
    # pass rate 1/4 -> frontier 4 * .25 * .75 = .75, spread over the wrong completion's tokens (prompt_mean).
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=ssopd",
        "num_steps=1",
        "prompts_per_step=2",
        "algo.group_size=4",
        "heldout_eval=false",
    )
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=ScriptedEngine(_answer_script(1), lambda s: tok(s)["input_ids"]), learner=learner)
    batch = learner.batches[0]
    assert [s.teacher_prompt_ids is not None for s in batch] == [False, True, False, False] * 2
    for g in range(2):
        witness, wrong = batch[4 * g], batch[4 * g + 1]
        text = tok.decode(wrong.teacher_prompt_ids)
        assert tok.decode(witness.completion_ids) in text and "reference solution" in text
        n = len(wrong.completion_ids)
        assert (wrong.distill_len, wrong.distill_units) == (n, 1.0)
        assert wrong.distill_weight == pytest.approx(0.75 / n)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["distill/targets"] == 2 and row["distill/prompt_weight_mean"] == pytest.approx(0.75)


def test_opsd_teacher_sees_the_reference_and_student_prompt_can_be_stripped(tiny_model_dir, tok, tmp_path):
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=opsd",
        "num_steps=1",
        "prompts_per_step=3",
        "heldout_eval=false",
        "algo.student_prompt=stripped_template",
    )
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=ScriptedEngine(_answer_script(0), lambda s: tok(s)["input_ids"]), learner=learner)
    batch = learner.batches[0]
    assert len(batch) == 3 and all(s.teacher_prompt_ids is not None for s in batch)
    for s in batch:
        teacher_text, student_text = tok.decode(s.teacher_prompt_ids), tok.decode(s.prompt_ids)
        assert "\\boxed{" in teacher_text and "Here is a reference solution" in teacher_text
        assert "<|im_start|>" in teacher_text and "<|im_start|>" not in student_text
        assert student_text.startswith("user\nProblem: Compute")
        assert (s.distill_weight, s.distill_units) == (1.0, float(len(s.completion_ids)))


def test_reference_contexts_need_solutions(tiny_model_dir, tmp_path):
    from sposd.train import UserError

    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    cfg = _cfg(f"model.path={tiny_model_dir}", "algo=opsd", "data=local", f"data.path={data}", "heldout_eval=false")
    with pytest.raises(UserError, match="needs reference solutions"):
        train(
            cfg, tmp_path / "run", engine=ScriptedEngine(_answer_script(0), lambda s: [1]), learner=RecordingLearner()
        )


def test_srpo_routes_samples_between_the_rl_and_distillation_terms(tiny_model_dir, tok, tmp_path):
    # group: #0 right, #1..#3 wrong. The correct one keeps GRPO only; the failed ones (they have a correct sibling)
    # get the teacher (shown #0) and lose their GRPO term (loss_weight 0).
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=srpo",
        "num_steps=1",
        "prompts_per_step=1",
        "algo.group_size=4",
        "heldout_eval=false",
    )
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=ScriptedEngine(_answer_script(1), lambda s: tok(s)["input_ids"]), learner=learner)
    batch = learner.batches[0]
    assert [s.distilled for s in batch] == [False, True, True, True]
    assert [s.loss_weight for s in batch] == [1.0, 0.0, 0.0, 0.0]
    demo = tok.decode(batch[0].completion_ids)
    for s in batch[1:]:
        text = tok.decode(s.teacher_prompt_ids)
        assert f"Correct solution:\n\n{demo}" in text and "Correctly solve the original question." in text


def test_cepo_scoring_contexts_splice_the_answers_after_the_student_prompt(tiny_model_dir, tok, tmp_path):
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=cepo",
        "num_steps=1",
        "prompts_per_step=1",
        "algo.group_size=4",
        "heldout_eval=false",
    )
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=ScriptedEngine(_answer_script(1), lambda s: tok(s)["input_ids"]), learner=learner)
    batch = learner.batches[0]
    for s in batch:
        assert s.teacher_prompt_ids is None and len(s.score_prompt_ids) == 2
        pos, neg = (p[len(s.prompt_ids) :] for p in s.score_prompt_ids)
        assert all(p[: len(s.prompt_ids)] == s.prompt_ids for p in s.score_prompt_ids)
        # gold answer vs the rejected rollout's boxed answer "x" (the scripted wrong answer)
        assert tok.decode(neg) == " x" and tok.decode(pos) != " x"
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["score/fallback"] == 0 and row["adv_mod/lambda"] == 0.5


def test_uopsd_majority_teaches_the_dissenter_without_rewards(tiny_model_dir, tok, tmp_path):
    # completions 0-2 answer the same, 3 answers "x": the majority's shortest (#0, equal lengths) teaches #3
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "algo=uopsd",
        "num_steps=1",
        "prompts_per_step=2",
        "algo.group_size=4",
        "heldout_eval=false",
    )
    learner = RecordingLearner()
    train(cfg, tmp_path, engine=ScriptedEngine(_answer_script(3), lambda s: tok(s)["input_ids"]), learner=learner)
    batch = learner.batches[0]
    assert [s.teacher_prompt_ids is not None for s in batch] == [False, False, False, True] * 2
    assert tok.decode(batch[0].completion_ids) in tok.decode(batch[3].teacher_prompt_ids)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["distill/targets"] == 2 and row["distill/loop_rate"] == 0.0


def test_paint_partner_is_the_full_solution_and_warnings_reach_config_yaml(tiny_model_dir, tok, tmp_path):
    cfg = _cfg(
        f"model.path={tiny_model_dir}",
        "model.name=toy-copy",
        "algo=paint",
        "num_steps=1",
        "prompts_per_step=2",
        "heldout_eval=false",
    )
    learner = RecordingLearner()
    train(
        cfg,
        tmp_path,
        engine=ScriptedEngine(_answer_script(0), lambda s: tok(s)["input_ids"]),
        learner=learner,
        resolved_config={"algo": {"name": "paint"}},
    )
    for s in learner.batches[0]:
        full, cut = tok.decode(s.partner_prompt_ids), tok.decode(s.teacher_prompt_ids)
        assert len(full) >= len(cut) and "Here is a reference solution" in full
    head = (tmp_path / "config.yaml").read_text().splitlines()[:2]
    assert head[0].startswith("# WARNING: optim.lr=0.0001 is above 1e-05 for a real model")
    assert "LoRA" not in head[1]  # PAINT declares no adapter
