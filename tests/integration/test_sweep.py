"""A real 2 x 2 toy sweep through Hydra's submitit_local launcher (each point a subprocess job, as on SLURM),
then `sposd report` on it: one row per algorithm with mean ± std over the two seeds, and the curves."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_submitit_local_sweep_and_report(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "sposd",
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        f"hydra.sweep.dir={sweep}",
        "algo=grpo,dr_grpo",
        "seed=0,1",
        f"model.path={tiny_model_dir}",
        "hardware=cpu",
        "hardware.num_threads=1",
        "num_steps=2",
        "prompts_per_step=2",
        "algo.group_size=2",
        "model.max_new_tokens=8",
        "heldout_eval=false",
        "save_final=false",
        "logger=jsonl",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    runs = sorted(p.parent for p in sweep.rglob("metrics.jsonl"))
    assert len(runs) == 4, runs
    assert len(list((sweep / ".submitit").iterdir())) >= 1  # the jobs really went through submitit

    r = subprocess.run(
        [sys.executable, "-m", "sposd", "report", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| algo=")]
    assert sorted(row.split(" | ")[0] for row in rows) == ["| algo=dr_grpo", "| algo=grpo"]  # sweep order
    assert all(row.split(" | ")[1:3] == ["2", "2"] for row in rows)  # two seeds, two steps each
    assert all("±" in row for row in rows)
    for name in ("report.md", "report.json", "report_reward_mean.png", "report_loss_total.png"):
        assert (sweep / name).is_file(), name
