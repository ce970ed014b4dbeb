"""`sposd eval` and `sposd grade` end to end through the CLI on the real stack (tiny random model, vLLM, math-verify).

Each `sposd eval` process evaluates all four benchmark files at once (k = 2, 8 new tokens, MATH-500 cut to 20
problems). The first one is killed with SIGKILL once a few problems are saved; the same command then finishes the
run, which must hold every problem exactly k times and keep what the killed run saved. (Two processes in all:
folding the kill into the end-to-end run saves a third vLLM start.) `sposd grade` re-grades the resulting
samples.jsonl and must reproduce eval's numbers. A random model answers nothing right: the contract is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SIZES = {"aime24": 30, "aime25": 30, "hmmt25": 30, "math500": 20}
METRIC_KEYS = ("avg@k", "maj@k", "pass@k", "mean_response_tokens", "max_response_tokens", "truncation_rate",
               "no_answer_rate", "num_problems", "num_samples", "k")  # fmt: skip


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory) -> Path:
    """The tiny random model with a 4,096-token context: the longest benchmark prompt has about 2,000 characters,
    and the character tokenizer makes each one a token."""
    from sposd.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny4k") / "model", max_position_embeddings=4096, seed=0)


def _sposd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sposd", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def four_benchmarks(long_tiny_model, shared_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The run directory of the killed-then-resumed evaluation, and the rows the killed run had saved."""
    run = tmp_path_factory.mktemp("eval") / "run"
    files = shared_dir / "data" / "benchmarks"
    cmd = [
        sys.executable, "-m", "sposd", "eval", f"model.path={long_tiny_model}",
        "benchmarks=[aime24,aime25,hmmt25,math500]", *[f"benchmarks.{b}.path={files / f'{b}.jsonl'}" for b in SIZES],
        "benchmarks.math500.limit=20", "eval.k=2", "eval.max_new_tokens=8", "hardware=cpu",
        "hardware.vllm_max_num_seqs=16",  # at most 8 problems at a time: they finish in ~14 waves, the kill lands
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = run / "samples.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if samples.exists() and len(samples.read_text().splitlines()) >= 10:  # 5 problems saved
                break
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = _rows(samples)
    assert 10 <= len(saved) < 2 * sum(SIZES.values()), "the first run must be killed mid-run"
    assert not json.loads((run / "results.json").read_text())["complete"]
    _sposd(*cmd[3:])  # the same command again
    return run, saved


def test_eval_writes_the_results_contract(four_benchmarks, shared_dir):
    run, _ = four_benchmarks
    results = json.loads((run / "results.json").read_text())
    assert results["complete"] is True and list(results["benchmarks"]) == list(SIZES)
    for name, n in SIZES.items():
        b = results["benchmarks"][name]
        assert (b["k"], b["num_problems"], b["num_samples"]) == (2, n, 2 * n)
        assert set(b["pass@k"]) == {"1", "2"} and b["pass@k"]["1"] == pytest.approx(b["avg@k"])
        assert 0 <= b["avg@k"] <= 0.1  # a random model
        assert 0 < b["mean_response_tokens"] <= b["max_response_tokens"] <= 8
        assert 0 <= b["truncation_rate"] <= 1 and b["source"]["kind"] == "local"
        ids = [json.loads(line)["id"] for line in (shared_dir / "data" / "benchmarks" / f"{name}.jsonl").open()][:n]
        assert [p["id"] for p in b["per_problem"]] == ids and all(p["samples"] == 2 for p in b["per_problem"])
    assert results["macro"]["benchmarks"] == list(SIZES)
    assert results["macro"]["avg@k"] == pytest.approx(sum(results["benchmarks"][b]["avg@k"] for b in SIZES) / 4)
    s = results["settings"]
    assert s["sampling"]["k"] == 2 and s["sampling"]["max_new_tokens"] == 8 and s["seed"] == 0
    assert s["prompt"]["enable_thinking"] is True and s["model"]["max_model_len"] <= 4096
    assert all(results["versions"][p] for p in ("sposd", "vllm", "torch", "transformers", "math-verify"))
    assert all(r["num_tokens"] <= 8 and isinstance(r["correct"], bool) for r in _rows(run / "samples.jsonl"))


def test_killed_run_resumed_without_redoing_or_double_counting(four_benchmarks, shared_dir):
    run, saved = four_benchmarks
    rows = _rows(run / "samples.jsonl")
    assert rows[: len(saved)] == saved  # what the killed run saved is kept as it was, not regenerated
    counts = Counter((r["benchmark"], r["id"]) for r in rows)
    assert set(counts.values()) == {2} and len(rows) == 2 * sum(SIZES.values())
    assert all(sorted(r["sample"] for r in rows if (r["benchmark"], r["id"]) == key) == [0, 1] for key in counts)
    for name, n in SIZES.items():  # exactly the problem set a clean run evaluates
        ids = [json.loads(line)["id"] for line in (shared_dir / "data" / "benchmarks" / f"{name}.jsonl").open()][:n]
        assert sorted(i for b, i in counts if b == name) == sorted(ids)


def test_grade_reproduces_eval_numbers(four_benchmarks, tmp_path):
    run, _ = four_benchmarks
    _sposd("grade", str(run / "samples.jsonl"), "--out", str(tmp_path))
    evald = json.loads((run / "results.json").read_text())
    graded = json.loads((tmp_path / "results.json").read_text())
    for name in SIZES:
        e, g = evald["benchmarks"][name], graded["benchmarks"][name]
        assert {k: e[k] for k in METRIC_KEYS} == {k: g[k] for k in METRIC_KEYS}
        # sposd grade lists problems in file order (finish order for eval); the counts are the same
        assert sorted(map(str, e["per_problem"])) == sorted(map(str, g["per_problem"]))
    assert evald["macro"] == graded["macro"]
    assert graded["settings"]["sampling"] == evald["settings"]["sampling"]  # kept from the eval run beside it
    out = _rows(tmp_path / "graded.jsonl")
    src = _rows(run / "samples.jsonl")
    assert [(r["correct"], r["extracted"]) for r in out] == [(r["correct"], r["extracted"]) for r in src]
