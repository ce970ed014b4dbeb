"""sposd/preflight.py and the folder rules of checkpoint.py: what sposd may write into, move, replace or prune."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sposd import checkpoint as ck
from sposd import preflight as pf
from sposd.errors import UserError


def _run(root: Path, steps=(2,), world=1) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    for s in steps:
        d = root / "checkpoints" / f"step_{s}"
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"step": s, "world": world}))
    if steps:
        (root / "checkpoints" / "latest").write_text(f"step_{max(steps)}\n")
    return root


def test_folder_kind(tmp_path):
    assert pf.folder_kind(tmp_path / "nope") == "missing"
    (tmp_path / "empty").mkdir()
    assert pf.folder_kind(tmp_path / "empty") == "empty"
    assert pf.folder_kind(_run(tmp_path / "run")) == "train"
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "results.json").write_text("{}")
    assert pf.folder_kind(tmp_path / "ev") == "eval"
    (tmp_path / "crashed" / ".hydra").mkdir(parents=True)  # Hydra's files of a run that failed at once
    (tmp_path / "crashed" / "cli.log").write_text("")
    assert pf.folder_kind(tmp_path / "crashed") == "sposd"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert pf.folder_kind(tmp_path / "mine") == "foreign"


def test_fresh_start_into_a_run_is_refused_or_moves_it_aside(tmp_path):
    run = _run(tmp_path / "run", steps=(30, 31))
    with pytest.raises(UserError, match=r"already holds a run \(checkpoints up to step 31\).*hydra.run.dir=.*run-2"):
        pf.check_train_run_dir(run, resume="never", existing_run="refuse")
    assert pf.check_train_run_dir(run, resume="auto", existing_run="refuse") is None  # continues it
    inside = str(run / "checkpoints" / "step_30")
    assert pf.check_train_run_dir(run, resume=inside, existing_run="refuse") is None  # its own checkpoint
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    moved = pf.check_train_run_dir(run, resume="never", existing_run="move_aside")
    assert moved == tmp_path / "run.old-2" and not run.exists()
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == before  # moved whole, nothing lost
    _run(run)
    assert pf.check_train_run_dir(run, resume="never", existing_run="move_aside") == tmp_path / "run.old-3"


def test_eval_folder_rules(tmp_path):
    pf.check_eval_run_dir(tmp_path / "new")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "samples.jsonl").write_text("")
    pf.check_eval_run_dir(tmp_path / "ev")  # an earlier evaluation: resumed
    run = _run(tmp_path / "run")
    (run / "final").mkdir()
    with pytest.raises(UserError, match=f"is a training run .* model.path={run / 'final'}"):
        pf.check_eval_run_dir(run)


def test_pruning_deletes_only_older_steps_of_this_run(tmp_path):
    # an old run's step_30 and step_31 share the folder (as before the refusal existed): saving step 1..3 of a new
    # run with keep=2 must not delete them, nor its own newest checkpoint, and `latest` names the new one
    root = tmp_path / "checkpoints"
    for old in (30, 31):
        (root / f"step_{old}").mkdir(parents=True)
        (root / f"step_{old}" / "meta.json").write_text("{}")
    for step in (1, 2, 3):
        tmp = ck.begin(root, step)
        ck.commit(root, tmp, step, {"world": 1}, keep=2)
        assert (root / (root / "latest").read_text().strip()).is_dir()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_2", "step_3", "step_30", "step_31"]
    assert ck.prunable(root, 3, keep=0) == []
    assert [p.name for p in ck.prunable(root, 3, keep=1)] == ["step_2"]


def test_export_target_rules_and_replacement(tmp_path):
    ckpt = _run(tmp_path / "run") / "checkpoints" / "step_2"
    ck.check_export_target(ckpt, tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    ck.check_export_target(ckpt, tmp_path / "empty", overwrite=False)
    with pytest.raises(ValueError, match="contains or is inside the checkpoint"):
        ck.check_export_target(ckpt, tmp_path, overwrite=True)  # the folder holding the run
    old = tmp_path / "exp"
    old.mkdir()
    (old / ck.EXPORT_MARKER).write_text("{}")
    (old / "stale.bin").write_text("old weights")
    with pytest.raises(ValueError, match="add --overwrite"):
        ck.check_export_target(ckpt, old, overwrite=False)
    ck.check_export_target(ckpt, old, overwrite=True)
    new = tmp_path / "staged"
    new.mkdir()
    (new / ck.EXPORT_MARKER).write_text("{}")
    (new / "model.safetensors").write_text("new weights")
    (tmp_path / "sibling.txt").write_text("keep me")
    ck._replace_with(new, old)
    assert sorted(p.name for p in old.iterdir()) == [ck.EXPORT_MARKER, "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "exp", "run", "sibling.txt"]  # no leftovers


def test_wandb_credentials(tmp_path):
    online = SimpleNamespace(wandb=True, mode="online")
    with pytest.raises(UserError, match="needs a W&B API key"):
        pf.check_wandb(online, {}, home=tmp_path)
    pf.check_wandb(online, {"WANDB_API_KEY": "x" * 40}, home=tmp_path)
    pf.check_wandb(online, {"WANDB_MODE": "offline"}, home=tmp_path)
    pf.check_wandb(SimpleNamespace(wandb=True, mode="offline"), {}, home=tmp_path)
    pf.check_wandb(SimpleNamespace(wandb=False, mode="online"), {}, home=tmp_path)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    pf.check_wandb(online, {}, home=tmp_path)  # `wandb login` wrote it


def test_hardware_against_the_machine():
    hw = SimpleNamespace(name="gpu8", device="cuda", nproc=8, nodes=1, vllm_tp=1)
    with pytest.raises(UserError, match="has none"):
        pf.check_hardware(hw, gpus=0)
    with pytest.raises(UserError, match="hardware.nproc=8 needs 8 GPUs and this machine has 2"):
        pf.check_hardware(hw, gpus=2)
    pf.check_hardware(hw, gpus=2, ranks=False)  # sposd eval: one process
    pf.check_hardware(SimpleNamespace(name="multinode", device="cuda", nproc=8, nodes=2, vllm_tp=1), gpus=8)
    with pytest.raises(UserError, match="vllm_tp=4 needs 4 GPUs"):
        pf.check_hardware(SimpleNamespace(name="gpu1", device="cuda", nproc=1, nodes=1, vllm_tp=4), gpus=2)


def test_resume_hint_names_the_exact_override(tmp_path):
    from sposd.cli import _resume_hint, _run_dir_override

    assert _run_dir_override(Path("runs/2026-12-02/10-00-00_ssopd_tiny")) == (
        "hydra.run.dir=runs/2026-12-02/10-00-00_ssopd_tiny"
    )
    assert _run_dir_override(Path("my runs/a=b")) == "'hydra.run.dir=\"my runs/a=b\"'"
    run = _run(tmp_path / "run", steps=(3,))
    assert _resume_hint(run) == f"to resume from step_3, run the same command with hydra.run.dir={run}"
    assert "nothing to resume" in _resume_hint(tmp_path / "fresh")
