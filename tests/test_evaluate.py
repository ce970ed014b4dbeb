"""sposd/evaluate.py with a scripted engine and a string-matching verifier (no vLLM, no math-verify): the
results.json / samples.jsonl contract, resume after an interruption, refusal of other settings, and evaluation
during training (metrics, per-step results, last and best in summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sposd.config import register_configs, register_resolvers, to_object
from sposd.errors import UserError
from sposd.evaluate import evaluate
from sposd.rewards.extract import extract_answer
from sposd.rollout.fake import ScriptedEngine

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()
register_configs()


class ExactVerifier:
    """Stands in for VerifierPool: an answer is right when its extracted text equals the gold string."""

    answer_line_fallback, timeout_s = True, 5.0

    def __init__(self):
        self.graded = 0

    def grade(self, pairs):
        self.graded += len(pairs)
        return [extract_answer(text) == gold for text, gold in pairs]

    def close(self): ...


class Interrupted(ScriptedEngine):
    """Yields `chunks` batches of finished problems, then raises KeyboardInterrupt (a Ctrl-C mid-run)."""

    def __init__(self, *a, chunks: int, **kw):
        super().__init__(*a, **kw)
        self.chunks = chunks

    def generate_stream(self, prompts, *, n, sampling, chunk=2):
        for i, groups in enumerate(super().generate_stream(prompts, n=n, sampling=sampling, chunk=chunk)):
            if i == self.chunks:
                raise KeyboardInterrupt
            yield groups


@pytest.fixture
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def bench_file(tmp_path) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i}+{i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(7)))  # fmt: skip
    return path


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("eval", overrides=["hardware=cpu", *overrides]))


def _script(p, i):
    """Problem p<j> with j even: samples 0 and 1 right; j odd: only sample 0 right; sample 2 never boxes."""
    j = int(p.id[1:])
    right = i == 0 or (i == 1 and j % 2 == 0)
    return "no box" if i == 2 else f"... \\boxed{{{p.answer if right else 'x'}}}"


def _eval_cfg(tiny_model_dir, bench_file, *extra):
    return _cfg(
        f"model.path={tiny_model_dir}", "benchmarks=[local]", f"benchmarks.local.path={bench_file}", "eval.k=3", *extra
    )


def _samples(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_results_and_samples_contract(tiny_model_dir, tok, bench_file, tmp_path):
    engine = ScriptedEngine(_script, lambda s: tok(s)["input_ids"])
    run = tmp_path / "run"
    results = evaluate(_eval_cfg(tiny_model_dir, bench_file), run, engine=engine, verifier=ExactVerifier(),
                       progress=False)  # fmt: skip
    assert engine.generate_calls == [(7, 3)]  # every problem queued at once, k samples each
    assert json.loads((run / "results.json").read_text()) == results and results["complete"] is True
    b = results["benchmarks"]["local"]
    # p0, p2, p4, p6: 2/3 right; p1, p3, p5: 1/3 -> avg@3 = (4 * 2/3 + 3 * 1/3) / 7 = 11/21
    assert b["avg@k"] == pytest.approx(11 / 21)
    # pass@2: 2 right of 3 -> 1; 1 right of 3 -> 1 - C(2,2)/C(3,2) = 2/3 -> (4 + 3 * 2/3) / 7 = 6/7
    assert b["pass@k"] == pytest.approx({"1": 11 / 21, "2": 6 / 7, "3": 1.0})
    # maj@3: sample 2 has no answer; 2 right beat 0 wrong, and a 1-1 tie goes to the first (right) sample -> 1
    assert b["maj@k"] == 1.0 and b["no_answer_rate"] == pytest.approx(1 / 3)
    assert [p["id"] for p in b["per_problem"]] == [f"p{i}" for i in range(7)]  # dataset order, not finish order
    assert (b["num_problems"], b["num_samples"], b["k"]) == (7, 21, 3)
    assert b["source"]["kind"] == "local" and b["prompt"].startswith("{problem}")
    s = results["settings"]
    assert s["preset"] == "opsd_repo" and s["seed"] == 0
    # what ran: 38,912 new tokens asked, but the model's context (<= 512) minus the shortest prompt capped it
    mml = s["model"]["max_model_len"]
    assert s["model"]["path"] == str(tiny_model_dir) and mml <= 512  # the model's context
    assert 0 < s["sampling"]["max_new_tokens"] < mml and s["sampling"]["max_new_tokens_setting"] == 38912
    assert {k: v for k, v in s["sampling"].items() if not k.startswith("max_new_tokens")} == {
        "k": 3, "temperature": 1.0, "top_p": 0.95, "top_k": -1, "min_p": 0.0, "engine": "vllm", "engine_seed": 0,
        "per_request_seed": None}  # fmt: skip
    assert s["prompt"]["enable_thinking"] is True and "last \\boxed" in s["grading"]["extraction"]
    assert set(results["versions"]) >= {"sposd", "vllm", "torch", "transformers", "math-verify"}
    assert results["macro"]["avg@k"] == b["avg@k"]
    rows = _samples(run)
    assert len(rows) == 21 and {r["fingerprint"] for r in rows} == {b["fingerprint"]}
    assert set(rows[0]) >= {"benchmark", "id", "sample", "problem", "answer", "completion", "extracted", "correct",
                            "num_tokens", "truncated"}  # fmt: skip


def test_interrupted_run_resumes_without_redoing_or_double_counting(tiny_model_dir, tok, bench_file, tmp_path):
    cfg = _eval_cfg(tiny_model_dir, bench_file)
    encode = lambda s: tok(s)["input_ids"]  # noqa: E731
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, run, engine=Interrupted(_script, encode, chunks=2), verifier=ExactVerifier(), progress=False)
    partial = json.loads((run / "results.json").read_text())
    assert partial["complete"] is False and partial["progress"] == {"local": "4/7"}  # 2 chunks of 2 problems
    assert len(_samples(run)) == 12

    engine = ScriptedEngine(_script, encode)
    verifier = ExactVerifier()
    results = evaluate(cfg, run, engine=engine, verifier=verifier, progress=False)
    assert engine.generate_calls == [(3, 3)] and verifier.graded == 9  # only the 3 problems left
    rows = _samples(run)
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted((f"p{i}", s) for i in range(7) for s in range(3))
    clean = evaluate(cfg, tmp_path / "clean", engine=ScriptedEngine(_script, encode), verifier=ExactVerifier(),
                     progress=False)  # fmt: skip
    assert results["benchmarks"]["local"]["per_problem"] == clean["benchmarks"]["local"]["per_problem"]
    assert results["benchmarks"]["local"]["avg@k"] == clean["benchmarks"]["local"]["avg@k"]
    # a third run has nothing to do and builds no engine
    assert evaluate(cfg, run, engine=None, verifier=None, progress=False)["benchmarks"] == results["benchmarks"]


def test_resume_with_other_settings_is_refused(tiny_model_dir, tok, bench_file, tmp_path):
    encode = lambda s: tok(s)["input_ids"]  # noqa: E731
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_eval_cfg(tiny_model_dir, bench_file), run, engine=Interrupted(_script, encode, chunks=1),
                 verifier=ExactVerifier(), progress=False)  # fmt: skip
    before = (run / "samples.jsonl").read_text()
    with pytest.raises(UserError, match=r"other settings \(eval.temperature: 1.0 -> 0.6"):
        evaluate(_eval_cfg(tiny_model_dir, bench_file, "eval.temperature=0.6"), run, engine=ScriptedEngine(
            _script, encode), verifier=ExactVerifier(), progress=False)  # fmt: skip
    assert (run / "samples.jsonl").read_text() == before
    # a limit is not a setting that changes samples: the run continues (the scripted engine finished p6 and p5
    # first; they stay in samples.jsonl but results.json covers the first 5 problems only)
    results = evaluate(_eval_cfg(tiny_model_dir, bench_file, "eval.limit=5"), run,
                       engine=ScriptedEngine(_script, encode), verifier=ExactVerifier(), progress=False)  # fmt: skip
    assert [p["id"] for p in results["benchmarks"]["local"]["per_problem"]] == ["p0", "p1", "p2", "p3", "p4"]
    assert len({r["id"] for r in _samples(run)}) == 7


def test_prompt_too_long_for_the_model_is_a_user_error(tiny_model_dir, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "a", "problem": "x" * 600, "answer": "1"}) + "\n")  # 600 chars > 512 ctx
    with pytest.raises(UserError, match="problem 'a' has a .*-token prompt.*max_model_len=512"):
        evaluate(_eval_cfg(tiny_model_dir, path), tmp_path / "run", engine=None, verifier=None, progress=False)


# ---- evaluation during training ----------------------------------------------------------------------------
class RecordingLearner:
    def __init__(self):
        import torch

        self.module = torch.nn.Linear(2, 2)

    def train_step(self, samples, *, max_len):
        return {"loss/total": 0.5}

    def save_hf(self, out_dir, *, tokenizer=None):
        return None


def test_training_evaluates_every_n_steps_and_reports_last_and_best(tiny_model_dir, tok, tmp_path):
    from sposd.train import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = to_object(compose("train", overrides=[
            "hardware=cpu", "logger=jsonl", f"model.path={tiny_model_dir}", "num_steps=3", "prompts_per_step=2",
            "algo=grpo", "algo.group_size=2", "heldout_eval=false", "save_samples_every=0",
            "train.eval.every=2", "eval.k=2", "benchmarks.toy.limit=4",
            "train.checkpoint.on_exit=false", "train.checkpoint.every=0",  # the stand-in learner has no state
        ]))  # fmt: skip
    calls = {"eval": 0}

    def script(p, i):
        # eval prompts carry their benchmark; the 1st evaluation gets 2/2 right per problem, the 2nd 1/2
        if "benchmark" in p.meta:
            calls["eval"] += 1
            right = i == 0 or calls["eval"] <= 8
            return f"\\boxed{{{p.answer if right else 'x'}}}"
        return f"\\boxed{{{p.answer if i == 0 else 'x'}}}"

    summary = train(cfg, tmp_path, engine=ScriptedEngine(script, lambda s: tok(s)["input_ids"]),
                    learner=RecordingLearner())  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r.get("eval/toy/avg@k") for r in rows}
    assert scores == {1: None, 2: 1.0, 3: 0.5}  # every 2 steps, and at the last step
    assert rows[1]["eval/macro/avg@k"] == 1.0 and rows[1]["time/eval_s"] > 0
    results = json.loads((tmp_path / "eval" / "step_2" / "results.json").read_text())
    assert results["benchmarks"]["toy"]["num_problems"] == 4 and results["settings"]["train_step"] == 2
    assert len((tmp_path / "eval" / "step_3" / "samples.jsonl").read_text().splitlines()) == 8
    ev = summary["eval"]
    assert (ev["last"]["step"], ev["last"]["eval/macro/avg@k"]) == (3, 0.5)
    assert (ev["best"]["step"], ev["best"]["eval/macro/avg@k"]) == (2, 1.0)
    assert json.loads((tmp_path / "summary.json").read_text())["eval"] == ev
