"""The colocation sequence (sleep after rollouts, free, wake weights, sync, free, wake KV cache): the loop runs it."""

from __future__ import annotations

import pytest

from sposd.rollout.colocation import Colocation


class RecordingEngine:
    def __init__(self, calls):
        self.calls = calls

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")


def test_sync_wakes_weights_then_kv_cache_with_frees_between():
    calls = []
    colo = Colocation(RecordingEngine(calls), level=2, free_memory=lambda: calls.append("free"))
    colo.release()
    calls.append("train_step")
    out = colo.sync(lambda: calls.append("push") or {"sync/gb": 1.0})
    assert out == {"sync/gb": 1.0}
    assert calls == [
        "sleep(2)",
        "train_step",
        "free",  # the learner's cached blocks go back before vLLM maps its weights
        "wake_up(weights)",
        "push",
        "free",  # the sync's buffers go back before the KV cache is mapped
        "wake_up(kv_cache)",
    ]


def test_level_1_stays_available_and_others_are_refused():
    calls = []
    Colocation(RecordingEngine(calls), level=1, free_memory=lambda: None).release()
    assert calls == ["sleep(1)"]
    with pytest.raises(ValueError, match="sleep level must be 1 or 2"):
        Colocation(RecordingEngine(calls), level=3)


def test_train_loop_runs_the_sequence_every_step(run_loop):
    _, engine = run_loop("num_steps=2", "hardware.vllm_sleep_level=1")
    step = ["generate", "sleep(1)", "wake_up(weights)", "load_weights", "wake_up(kv_cache)"]
    assert engine.calls == step * 2
