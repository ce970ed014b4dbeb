"""Checkpoints and resume on the real stack: `sposd train` interrupted (a signal, kill -9, a kill during a
checkpoint write) and started again with the same command.

Contract: each step appears exactly once in metrics.jsonl, the final step is reached, no checkpoint directory is
ever visible half-written, and a resumed run computes what the uninterrupted run did (same rollouts, losses).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# metrics that depend on the machine's speed, not on what was computed
TIMING = ("time/", "sync/gb_per_s", "mem/")


def _cmd(run_dir: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sposd",
        "train",
        f"hydra.run.dir={run_dir}",
        f"model.path={model}",
        "prompts_per_step=4",
        "algo.group_size=4",
        "model.max_new_tokens=16",
        "heldout_eval=false",
        "save_final=false",
        "logger=jsonl",
        *extra,
    ]


def _steps(run_dir: Path) -> list[int]:
    f = run_dir / "metrics.jsonl"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return out


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _computed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


def _wait_for(pred, proc: subprocess.Popen, *, timeout: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{out[-4000:]}")
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    # a session of its own, so kill -9 reaches torchrun and every rank at once
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def _finish(cmd: list[str], *, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _assert_checkpoints_sound(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    for n in names:
        if not n.endswith(".tmp"):
            assert (root / n / "meta.json").is_file(), f"{n} is visible but incomplete"
    if (root / "latest").exists():
        assert (root / (root / "latest").read_text().strip() / "meta.json").is_file()
    return names


def test_signal_checkpoints_requeues_and_the_resumed_run_is_exact(tiny_model_dir, tmp_path):
    # ATESD with an EMA teacher, so the resumed state includes a teacher and the exposure controller (its Beta
    # policy, Adam state, features and pending decisions: one window per step, an update every 2) besides the
    # optimizer and the schedule.
    algo = ["algo=atesd", "algo.distill.teacher=ema", "algo.distill.ema_rate=0.5", "num_steps=4"]
    algo += ["algo.distill.exposure.window=1", "algo.distill.exposure.update_every=2"]
    straight = tmp_path / "straight"
    _finish(_cmd(straight, tiny_model_dir, *algo, "train.checkpoint.every=0"))

    # The same run, stopped by SIGUSR1 (as SLURM does before a time limit) under a fake SLURM job.
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    run = tmp_path / "interrupted"
    cmd = _cmd(run, tiny_model_dir, *algo, "train.checkpoint.every=0")
    proc = _start(cmd, slurm)
    _wait_for(lambda: len(_steps(run)) >= 1, proc, timeout=300, what="step 1")
    os.killpg(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]  # requeued: a clean exit
    stopped = json.loads((run / "summary.json").read_text())["stopped"]
    assert stopped["signal"] == "SIGUSR1" and stopped["step"] < 4 and "requeued SLURM job 4242" in stopped["requeue"]
    assert log.read_text().split() == ["requeue", "4242"]
    assert (run / "checkpoints" / f"step_{stopped['step']}" / "meta.json").is_file()
    assert f"run the same command with hydra.run.dir={run}" in out  # the exact override to add

    _finish(cmd, env=slurm)  # the requeued job: the same command
    assert _steps(run) == [1, 2, 3, 4]
    for a, b in zip(_rows(straight), _rows(run), strict=True):
        assert _computed(a) == _computed(b), f"step {a['step']} differs after resuming"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", f"step_{stopped['step']}", "step_4"]

    # `sposd export` on the final checkpoint
    r = _finish([sys.executable, "-m", "sposd", "export", str(run / "checkpoints" / "step_4"), str(tmp_path / "hf")])
    assert "exported" in r.stdout and (tmp_path / "hf" / "config.json").exists()


def test_two_ranks_killed_mid_checkpoint_and_mid_step_resume_to_the_end(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cmd = _cmd(run, tiny_model_dir, "hardware=cpu2", "algo=grpo", "num_steps=8", "train.checkpoint.every=2")

    # 1. kill -9 while the second checkpoint is being written (each write pauses 3 s between shards and commit)
    proc = _start(cmd, {"SPOSD_FAULT_CKPT_PAUSE_S": "3"})
    root = run / "checkpoints"
    _wait_for(lambda: (root / "step_4.tmp").is_dir(), proc, timeout=400, what="the step-4 checkpoint write")
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert _assert_checkpoints_sound(run) == ["step_2", "step_4.tmp"]
    assert (root / "latest").read_text().strip() == "step_2"

    # 2. the same command resumes from step 2; kill -9 it again in the middle of a random later step
    proc = _start(cmd)
    target = random.choice([5, 6, 7])
    _wait_for(lambda: max(_steps(run), default=0) >= target, proc, timeout=400, what=f"step {target}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _assert_checkpoints_sound(run)

    # 3. and once more to the end
    _finish(cmd)
    assert _steps(run) == list(range(1, 9)), _steps(run)  # every step exactly once
    # a checkpoint's write time is logged once, with the step after it (checkpoints at even steps)
    assert all(r["step"] % 2 == 1 for r in _rows(run) if "time/checkpoint_s" in r)
    assert _assert_checkpoints_sound(run) == ["step_6", "step_8"]  # keep=2; the partial write was cleaned up
    assert (root / "latest").read_text().strip() == "step_8"
    assert json.loads((root / "step_8" / "meta.json").read_text())["world"] == 2
