"""Tests for sposd/algos/schedule.py: auxiliary-loss coefficient schedules."""

from __future__ import annotations

import pytest

from sposd.algos.schedule import coef_at


def test_constant():
    assert coef_at(1, 100, base=0.5) == 0.5
    assert coef_at(100, 100, base=0.5, schedule="constant", warmup_steps=10, final_ratio=0.1) == 0.5


def test_linear_decay():
    # base 1.0 -> 0.0 over steps 1..5: slope 1/4 per step
    assert coef_at(1, 5, base=1.0, schedule="linear_decay") == pytest.approx(1.0)
    assert coef_at(2, 5, base=1.0, schedule="linear_decay") == pytest.approx(0.75)
    assert coef_at(3, 5, base=1.0, schedule="linear_decay") == pytest.approx(0.5)
    assert coef_at(5, 5, base=1.0, schedule="linear_decay") == pytest.approx(0.0)
    # base 2.0 -> 2.0 * 0.5 = 1.0 over steps 1..3; step 2 is halfway: 2.0 * (1 - 0.5 * 0.5) = 1.5
    assert coef_at(2, 3, base=2.0, schedule="linear_decay", final_ratio=0.5) == pytest.approx(1.5)
    assert coef_at(3, 3, base=2.0, schedule="linear_decay", final_ratio=0.5) == pytest.approx(1.0)


def test_linear_decay_edges():
    assert coef_at(7, 5, base=1.0, schedule="linear_decay", final_ratio=0.2) == pytest.approx(0.2)  # held after end
    assert coef_at(1, 1, base=3.0, schedule="linear_decay") == 3.0  # a one-step run keeps base


def test_warmup():
    # base 1.0 over 4 warm-up steps: 1/4, 2/4, 3/4, 1, then held
    assert coef_at(1, 100, base=1.0, schedule="warmup", warmup_steps=4) == pytest.approx(0.25)
    assert coef_at(3, 100, base=1.0, schedule="warmup", warmup_steps=4) == pytest.approx(0.75)
    assert coef_at(4, 100, base=1.0, schedule="warmup", warmup_steps=4) == pytest.approx(1.0)
    assert coef_at(50, 100, base=0.5, schedule="warmup", warmup_steps=4) == pytest.approx(0.5)
    assert coef_at(1, 100, base=0.5, schedule="warmup", warmup_steps=1) == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ValueError, match="warmup_steps"):
        coef_at(1, 10, base=1.0, schedule="warmup", warmup_steps=0)
    with pytest.raises(ValueError, match="unknown schedule"):
        coef_at(1, 10, base=1.0, schedule="cosine")
