"""metrics.jsonl on resume (each step exactly once) and wandb in offline mode (config logged, secrets never)."""

from __future__ import annotations

import json

import pytest

from sposd.logging import MetricsLogger


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    log = MetricsLogger(tmp_path, enabled=True)
    for s in (1, 2, 3, 4):
        log.log(s, {"reward/mean": 0.1 * s})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')  # killed mid-write
    # the run is resumed from its step-2 checkpoint: steps 3 and 4 will be logged again
    log = MetricsLogger(tmp_path, enabled=True, resume_from=2)
    for s in (3, 4, 5):
        log.log(s, {"reward/mean": 0.0})
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]


def test_a_fresh_start_in_a_used_directory_starts_the_log_over(tmp_path):
    MetricsLogger(tmp_path, enabled=True).log(1, {"x": 1.0})
    MetricsLogger(tmp_path, enabled=True).log(1, {"x": 2.0})
    assert _steps(tmp_path / "metrics.jsonl") == [1]


def test_only_rank_zero_writes(tmp_path):
    MetricsLogger(tmp_path, enabled=False).log(1, {"x": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_offline_logs_config_without_secrets_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    secret = "sk-test-secret-value-0123456789"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"project": "sposd-test", "entity": None, "group": "g", "tags": ["t"], "mode": "offline"}
    resolved = {"algo": {"name": "ssopd"}, "logger": {"api_key": secret}, "seed": 3}
    log = MetricsLogger(tmp_path, enabled=True, wandb_cfg=cfg, config=resolved)
    run_id = log._wandb.id
    assert log._wandb.config["algo"] == {"name": "ssopd"} and log._wandb.config["logger"]["api_key"] == "<redacted>"
    log.log(1, {"reward/mean": 0.5})
    log.close()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert offline, "no offline run directory"
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"the API key leaked into {f}"

    log = MetricsLogger(tmp_path, enabled=True, wandb_cfg=cfg, config=resolved, resume_from=1)
    assert log._wandb.id == run_id
    log.close()
