"""The JIT-extension cache: one per installation, and a dead build's lock never blocks a run."""

from __future__ import annotations

import os

from sposd.extensions import clear_stale_locks, extensions_dir, install_key


def test_the_cache_is_keyed_on_this_installation(tmp_path):
    key = install_key()
    assert key.startswith("py3") and "-torch" in key and "-ds" in key
    assert extensions_dir(tmp_path) == tmp_path / key
    assert install_key() == key  # stable across calls (and so across runs of this virtualenv)


def test_only_locks_older_than_any_build_are_removed(tmp_path):
    for op in ("dead", "building"):
        (tmp_path / op).mkdir()
        (tmp_path / op / "lock").touch()
    os.utime(tmp_path / "dead" / "lock", (1000.0, 1000.0))
    os.utime(tmp_path / "building" / "lock", (1900.0, 1900.0))
    removed = clear_stale_locks(tmp_path, max_age_s=900, now=2000.0)  # 1000 s old: dead; 100 s old: a live build
    assert removed == [tmp_path / "dead" / "lock"]
    assert not (tmp_path / "dead" / "lock").exists() and (tmp_path / "building" / "lock").exists()
