"""SLURM launch without SLURM: the launcher config composes, and the sbatch script submitit would submit for a
sweep carries the requested resources (read through submitit's own API; nothing is submitted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_launcher_config_composes_from_the_cli():
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "train", "hydra/launcher=slurm", "hardware=multinode", "--cfg", "hydra"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in r.stdout
    assert "tasks_per_node: ${hardware.nproc}" in r.stdout


def _sbatch_text(tmp_path, monkeypatch, *overrides: str) -> tuple[str, int]:
    """Run Hydra's SlurmLauncher.launch for a 2-point sweep up to the submission and return the sbatch text."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from sposd.config import register_configs, register_resolvers

    register_resolvers()
    register_configs()
    captured = {}

    class _Submitted(Exception):
        pass

    def map_array(self, fn, *args):  # where submitit would write the script and call sbatch
        captured.update(executor=self, jobs=len(args[0]))
        raise _Submitted

    monkeypatch.setattr(submitit.slurm.slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun found"
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides],
            return_hydra_config=True,
        )
        HydraConfig.instance().set_config(cfg)
        launcher = instantiate(cfg.hydra.launcher)
        launcher.config = cfg  # what Hydra's setup() stores
        with pytest.raises(_Submitted):
            launcher.launch([["algo=grpo", "seed=0"], ["algo=ssopd", "seed=0"]], initial_job_idx=0)
    ex = captured["executor"]._executor
    return ex._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "uid"), captured["jobs"]


def test_sbatch_script_has_the_requested_resources(tmp_path, monkeypatch):
    text, jobs = _sbatch_text(
        tmp_path,
        monkeypatch,
        "hardware=multinode",
        "hardware.nodes=4",
        "hydra.launcher.partition=gpu-long",
        "hydra.launcher.account=proj42",
        "hydra.launcher.qos=high",
        "hydra.launcher.constraint=h100",
        "hydra.launcher.timeout_min=2880",
        "+hydra.launcher.additional_parameters.exclusive=true",
        "+hydra.launcher.additional_parameters.mail-type=END",
        "hydra.launcher.setup=[source .venv/bin/activate]",
    )
    assert jobs == 2  # one SLURM job (array task) per sweep point
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",  # one task per rank
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu-long",
        "#SBATCH --account=proj42",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --time=2880",
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
        "#SBATCH --signal=USR2@120",  # time to finish a step and checkpoint before the limit
    ):
        assert line in text, f"{line!r} missing from\n{text}"
    assert "source .venv/bin/activate" in text and "srun --unbuffered" in text


def test_sbatch_script_follows_the_hardware_preset(tmp_path, monkeypatch):
    text, _ = _sbatch_text(tmp_path, monkeypatch, "hardware=gpu1")
    assert "#SBATCH --nodes=1" in text and "#SBATCH --ntasks-per-node=1" in text and "--gpus-per-node=1" in text


def test_multinode_outside_slurm_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "sposd", "train", "hardware=multinode", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("sposd: error: hardware.nodes=2 needs one process per rank")
