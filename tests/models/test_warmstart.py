"""Tests for sposd/models/warmstart.py on a few-step budget: examples, loss goes down, determinism, the cache.

The calibrated warm start itself (hundreds of steps, about a minute) is not run here.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from sposd.data.templates import TOY_INSTRUCTION, build_privileged_message, build_user_message
from sposd.models import warmstart as ws
from sposd.models.tokenizer import build_char_tokenizer

ARCH = dict(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
FAST = dict(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, num_threads=2)


def test_example_ids_mask_only_the_reply():
    tok = build_char_tokenizer()
    rec = {"problem": "Compute 1+2.", "solution": "1+2=3. \\boxed{3}", "answer": "3"}
    for priv in (False, True):
        prompt, reply = ws.toy_example_ids(tok, rec, privileged=priv)
        msg = (build_privileged_message if priv else lambda p, s, **k: build_user_message(p, **k))(
            rec["problem"], rec["solution"], instruction=TOY_INSTRUCTION)
        assert msg in tok.decode(prompt)
        assert tok.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert tok.decode(reply) == rec["solution"] + "<|im_end|>"
    ids_BT, mask_BT, labels_BT = ws._collate([(prompt, reply), ([5, 6], [7, 2])], tok.pad_token_id)
    assert ids_BT.shape[1] % 32 == 0
    assert labels_BT[0][labels_BT[0] != ws.IGNORE].tolist() == reply
    assert labels_BT[1][labels_BT[1] != ws.IGNORE].tolist() == [7, 2]
    assert mask_BT[1].sum() == 4


def test_warm_start_lowers_loss_and_is_deterministic(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sposd.models.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "base", seed=0, **ARCH)
    a = ws.warm_start(base, tmp_path / "a", seed=0, privileged_frac=0.5, **FAST)
    info = json.loads((a / "warmstart.json").read_text())
    losses = info["losses"]
    assert len(losses) == FAST["steps"]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    AutoModelForCausalLM.from_pretrained(a)
    assert AutoTokenizer.from_pretrained(a).chat_template == AutoTokenizer.from_pretrained(base).chat_template
    assert json.loads((a / "config.json").read_text())["torch_dtype"] == "float32"

    b = ws.warm_start(base, tmp_path / "b", seed=0, privileged_frac=0.5, **FAST)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((b / "warmstart.json").read_text())["losses"] == losses


def test_ensure_toy_model_caches(tmp_path, monkeypatch):
    knobs = dict(ARCH, seed=0, log=None, **FAST)
    first = ws.ensure_toy_model(tmp_path, **knobs)
    assert (first / "model.safetensors").exists() and (first / ws.DONE_MARKER).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".base-"))]

    def boom(*a, **k):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(ws, "warm_start", boom)
    t0 = time.perf_counter()
    assert ws.ensure_toy_model(tmp_path, **knobs) == first
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(AssertionError, match="rebuilt"):  # any knob change is a different model
        ws.ensure_toy_model(tmp_path, **dict(knobs, lr=1e-3))


def test_ensure_toy_model_ignores_a_half_written_dir(tmp_path):
    knobs = dict(ARCH, seed=0, log=None, **dict(FAST, steps=2))
    path = ws.toy_model_path(tmp_path, **knobs)
    path.mkdir(parents=True)  # an interrupted run's leftovers, with no completion marker
    (path / "config.json").write_text("{}")
    out = ws.ensure_toy_model(tmp_path, **knobs)
    assert out == path and (out / ws.DONE_MARKER).exists()
    assert ws.toy_model_path(tmp_path, **dict(knobs, num_threads=1, log=print)) == path


def test_ensure_toy_model_rejects_unknown_knobs(tmp_path):
    with pytest.raises(ValueError, match="unknown knobs \\['stepz'\\]"):
        ws.ensure_toy_model(tmp_path, stepz=3)


def test_sample_accuracy_runs(tiny_model_dir):
    recs = [{"problem": "Compute 1+2.", "answer": "3"}, {"problem": "Compute 5-9.", "answer": "-4"}]
    acc = ws.sample_accuracy(tiny_model_dir, recs, n_samples=2, temperature=1.0, max_new_tokens=4, seed=0)
    assert 0.0 <= acc <= 1.0
    assert ws._same_answer("-4", "-4") and not ws._same_answer(None, "3") and not ws._same_answer("4", "-4")



def test_every_teacher_format_trains_the_own_style_reply():
    import random

    from sposd.data.teacher_formats import TEACHER_FORMATS, teacher_message
    from sposd.data.templates import render_prompt_ids

    tok = build_char_tokenizer()
    rec = {"problem": "Compute 12+7-15.", "solution": "12+7=19. 19-15=4. \\boxed{4}", "answer": "4"}
    for fmt in ("student", *TEACHER_FORMATS):
        prompt, reply = ws.format_example_ids(tok, rec, fmt, random.Random(1))
        msg = teacher_message(rec, fmt, random.Random(1), instruction=TOY_INSTRUCTION, tokenizer=tok)
        # the ids the teacher context renders (OPSDC's em dash is <|unk|> in the character vocabulary, in both)
        assert prompt == render_prompt_ids(tok, msg, enable_thinking=False), fmt
        assert tok.decode(reply) == rec["solution"] + "<|im_end|>"


def test_cache_key_changes_with_the_format_mix(monkeypatch):
    knobs = dict(ARCH, seed=0, steps=10)
    key = ws.toy_model_key(**knobs)
    monkeypatch.setitem(ws.TEACHER_FORMATS, "concise", 0.5)
    assert ws.toy_model_key(**knobs) != key
    monkeypatch.undo()
    assert ws.toy_model_key(**knobs) == key
    monkeypatch.setattr(ws, "RECIPE_VERSION", ws.RECIPE_VERSION + 1)
    assert ws.toy_model_key(**knobs) != key


def test_slip_frac_noises_student_replies_only():
    import random

    from sposd.data.toy import parse_problem, worked_solution

    tok = build_char_tokenizer()
    knobs = dict(max_operand=19, min_terms=2, max_terms=3)
    # slip_frac 0 draws exactly what the warm start drew before the knob existed (same rng stream, same key)
    a = ws._draw_examples(tok, random.Random(3), 64, 0.35, knobs)
    b = ws._draw_examples(tok, random.Random(3), 64, 0.35, knobs, slip_frac=0.0)
    assert a == b
    plain, priv = ws._draw_examples(tok, random.Random(3), 400, 0.35, knobs, slip_frac=0.5)

    def wrong(prompt, reply):
        problem = re.search(r"Compute [0-9+-]+[.]", tok.decode(prompt)).group(0)
        return tok.decode(reply) != worked_solution(*parse_problem(problem)) + "<|im_end|>"

    frac = sum(wrong(*e) for e in plain) / len(plain)
    assert 0.4 < frac < 0.6, frac  # about half the student replies slip
    assert not any(wrong(*e) for e in priv)  # a teacher message's reply is always the correct solution


def test_slip_frac_is_in_the_cache_key_only_when_set():
    _, _, keyed = ws._resolve_toy_knobs(dict(ARCH, seed=0))
    assert "slip_frac" not in keyed  # the key of every model cached before the knob
    assert ws._resolve_toy_knobs(dict(ARCH, seed=0, slip_frac=0.0))[2] == keyed
    assert ws._resolve_toy_knobs(dict(ARCH, seed=0, slip_frac=0.3))[2]["slip_frac"] == 0.3
    with pytest.raises(ValueError, match="slip_frac"):
        ws.warm_start("unused", "unused", slip_frac=1.5)


def test_calibrate_probes_a_cached_model(tmp_path, capsys):
    from sposd.models import calibrate
    from sposd.models.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "base", seed=0, **ARCH)
    model = ws.warm_start(base, tmp_path / "m", seed=3, slip_frac=0.5, **FAST)
    calibrate.main(["--model", str(model), "--num-heldout", "4", "--n-samples", "1", "--num-threads", "1"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["seed"] == 3 and row["knobs"]["slip_frac"] == 0.5
    assert {"acc", "acc_greedy"} <= set(row) and all(0 <= row[k] <= 1 for k in calibrate.PROBES)
    with pytest.raises(SystemExit):
        calibrate.main(["--model", str(model), "--out", str(tmp_path / "x")])
