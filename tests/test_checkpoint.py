"""Checkpoint directories: only complete ones count, `latest`, keep-last-N, resume lookup (no DeepSpeed here)."""

from __future__ import annotations

import pytest

from sposd import checkpoint as ck


def _save(root, step, keep=2, meta=None):
    tmp = ck.begin(root, step)
    (tmp / "payload.txt").write_text(f"step {step}")
    return ck.commit(root, tmp, step, meta or {"world": 1}, keep=keep)


def test_commit_renames_writes_meta_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    final = _save(root, 10)
    assert final == root / "step_10" and (final / "payload.txt").read_text() == "step 10"
    assert ck.read_meta(final) == {"step": 10, "world": 1}
    assert (root / "latest").read_text().strip() == "step_10"
    assert not list(root.glob("*.tmp"))


def test_keep_last_n(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (5, 10, 15, 20):
        _save(root, s, keep=2)
    assert [p.name for p in ck.list_checkpoints(root)] == ["step_15", "step_20"]


def test_numeric_order_not_lexical(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (9, 10, 100):
        _save(root, s, keep=0)  # 0 keeps all
    assert [p.name for p in ck.list_checkpoints(root)] == ["step_9", "step_10", "step_100"]
    assert ck.latest_checkpoint(root).name == "step_100"


def test_a_half_written_checkpoint_is_invisible_and_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    # killed mid-write: the tmp dir has payload but no meta (meta is written last, then renamed)
    (root / "step_20.tmp").mkdir()
    (root / "step_20.tmp" / "payload.txt").write_text("partial")
    # a directory with a real name but no meta (e.g. copied by hand) does not count either
    (root / "step_30").mkdir()
    assert ck.latest_checkpoint(root).name == "step_10"
    _save(root, 40)
    assert not (root / "step_20.tmp").exists()


def test_latest_pointer_that_lags_behind_is_not_trusted(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10)
    _save(root, 20)
    (root / "latest").write_text("step_10\n")  # killed between the rename and the pointer update
    assert ck.latest_checkpoint(root).name == "step_20"


def test_resave_of_the_same_step_replaces_it(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 10, meta={"world": 1, "attempt": 1})
    _save(root, 10, meta={"world": 1, "attempt": 2})
    assert ck.read_meta(root / "step_10")["attempt"] == 2


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert ck.resolve_resume("auto", run) is None  # a fresh run
    _save(ck.checkpoint_root(run), 7)
    assert ck.resolve_resume("auto", run).name == "step_7"
    assert ck.resolve_resume("never", run) is None
    assert ck.resolve_resume(str(run / "checkpoints" / "step_7"), tmp_path / "other") == run / "checkpoints" / "step_7"
    assert ck.resolve_resume(str(run), tmp_path / "other").name == "step_7"  # a run directory: its newest
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ck.resolve_resume(str(tmp_path / "nope"), run)
