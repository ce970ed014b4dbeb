"""`sposd train` end to end through the CLI on the real stack (tiny random model, toy task, 2 steps).

Checks the run-directory contract of DESIGN.md, that final/ loads in transformers and vLLM, and that
`hardware=cpu2` runs two gloo ranks with ZeRO-3 partitioning and one vLLM engine per rank. Both also evaluate the
policy on the toy benchmark during training (`train.eval.every`, through the training engine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

METRIC_KEYS = {"step", "reward/mean", "loss/total", "time/step_s", "time/rollout_s", "time/learn_s", "time/sync_s"}


def _train(run_dir: Path, *overrides: str, timeout: int = 420) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "sposd",
        "train",
        f"hydra.run.dir={run_dir}",
        "num_steps=2",
        "prompts_per_step=4",
        "algo.group_size=4",
        "model.max_new_tokens=16",
        "heldout_eval=false",
        "logger=jsonl",
        *overrides,
    ]
    env = {**os.environ, "WANDB_API_KEY": "sk-test-secret-value-0123456789"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# Evaluation during training on the toy benchmark (4 problems x 2 samples, 8 new tokens), at the last step.
EVAL = ("train.eval.every=2", "eval.k=2", "eval.max_new_tokens=8", "benchmarks.toy.limit=4")


def _check_eval(run: Path) -> None:
    rows = _metrics(run)
    assert "eval/toy/avg@k" not in rows[0] and 0 <= rows[1]["eval/toy/avg@k"] <= 1
    results = json.loads((run / "eval" / "step_2" / "results.json").read_text())
    assert results["benchmarks"]["toy"]["num_problems"] == 4 and results["benchmarks"]["toy"]["num_samples"] == 8
    summary = json.loads((run / "summary.json").read_text())["eval"]
    assert summary["last"]["step"] == summary["best"]["step"] == 2


def test_one_rank_writes_the_run_contract(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    _train(run, f"model.path={tiny_model_dir}", "hardware=cpu", "save_samples_every=1", *EVAL)
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert METRIC_KEYS <= rows[0].keys()
    _check_eval(run)
    assert rows[0]["groups/generated"] == 4
    assert all(r["actor/rollout_logp_abs_diff"] < 1e-4 for r in rows), "vLLM sampled from stale weights"
    for step in (1, 2):
        samples = [json.loads(s) for s in (run / "samples" / f"step_{step}.jsonl").read_text().splitlines()]
        assert len(samples) == 16 and {"completion", "reward", "advantage", "answer"} <= samples[0].keys()
    config_text = (run / "config.yaml").read_text()
    assert "algo:" in config_text and "sk-test-secret" not in config_text
    assert not any(
        "sk-test-secret" in p.read_text(errors="ignore")
        for p in run.rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".jsonl", ".json", ".log"}
    )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run / "final")
    AutoTokenizer.from_pretrained(run / "final")
    from sposd.rollout.base import SamplingCfg
    from sposd.rollout.vllm_engine import VLLMEngine
    from sposd.types import Prompt

    engine = VLLMEngine(str(run / "final"), max_model_len=64)
    try:
        out = engine.generate(
            [Prompt(id="x", problem="", prompt_ids=[1, 2, 3], answer="")], n=2, sampling=SamplingCfg(max_new_tokens=4)
        )
        assert len(out[0].completions) == 2
    finally:
        engine.close()


def test_dapo_dynamic_sampling_runs_with_no_mixed_groups(tiny_model_dir, tmp_path):
    # A random model answers nothing right: every group is all-wrong, dynamic sampling keeps none and
    # refills up to max_gen_batches; the learner must cope with an empty batch.
    run = tmp_path / "dapo"
    _train(
        run, f"model.path={tiny_model_dir}", "hardware=cpu", "algo=dapo", "algo.max_gen_batches=2", "save_final=false"
    )
    rows = _metrics(run)
    assert [r["groups/kept"] for r in rows] == [0, 0]
    assert [r["groups/generated"] for r in rows] == [8, 8]


# ---- two ranks, self-distillation on the real stack -------------------------------------------------------
# SSOPD, OPSD and PAINT on one rank run in tests/integration/test_algo_family.py (one process, one vLLM engine).
def test_two_cpu_ranks_ssopd_keeps_teacher_passes_in_step(tmp_path):
    # `hardware=cpu2`: two gloo ranks through the torchrun re-launch, ZeRO-3 across them, one vLLM engine each.
    # Each rank finds its own mixed groups (the warm-started embedded model answers about a third right), so one
    # rank may need a teacher pass in a micro-batch where the other has none: that rank must run a matching dummy
    # pass or ZeRO-3's parameter gathers deadlock.
    run = tmp_path / "ssopd2"
    _train(
        run,
        "hardware=cpu2",
        "algo=ssopd",
        "algo.group_size=8",
        "prompts_per_step=8",
        "save_final=false",
        "model.max_new_tokens=48",
        "hardware.micro_batch_tokens=1024",
        "train.inspect.every=1",
        *EVAL,
        timeout=600,
    )
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2]  # logged once (rank 0), not once per rank
    # each rank generated its 4 prompts x 8; the metrics are global sums over both ranks
    assert rows[0]["groups/generated"] == 8
    assert sum(r["distill/targets"] for r in rows) > 0
    assert all(r["actor/rollout_logp_abs_diff"] < 1e-4 for r in rows)
    _check_eval(run)  # each rank evaluated 2 of the 4 problems; rank 0 gathered all 8 samples
    # `sposd inspect`'s records: rank 0 gathered every rank's marked rows of each step with distilled rows
    from sposd.inspect.records import load_step, recorded_steps

    steps = recorded_steps(run)
    assert steps and set(steps) <= {1, 2}
    recorded = [row for s in steps for row in load_step(run, s)]
    assert recorded and {row["rank"] for row in recorded} <= {0, 1}
    assert all(row["step"] in steps for row in recorded)
