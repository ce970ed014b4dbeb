"""Tests for sposd/ops/selection.py: frontier weights, SSOPD's shortest-correct / longest-wrong rule, prefix lengths."""

from __future__ import annotations

import math

import pytest

from sposd.ops.selection import PROMPT_WEIGHTS, prefix_length, prompt_weight, select_longest_wrong

# ---------------------------------------------------------------- prompt_weight


@pytest.mark.parametrize(
    ("kind", "p", "expected"),
    [
        ("frontier", 0.5, 1.0),  # 4 * 0.5 * 0.5 = 1
        ("frontier", 0.25, 0.75),  # 4 * 0.25 * 0.75 = 0.75
        ("frontier", 0.75, 0.75),  # symmetric: 4 * 0.75 * 0.25
        ("frontier", 0.0, 0.0),  # all wrong
        ("frontier", 1.0, 0.0),  # all correct
        ("indicator", 0.125, 1.0),
        ("indicator", 0.0, 0.0),
        ("indicator", 1.0, 0.0),
        ("sqrt", 0.25, math.sqrt(3) / 4),  # sqrt(0.25 * 0.75) = sqrt(3/16) = sqrt(3)/4
        ("sqrt", 0.5, 0.5),  # sqrt(0.25)
        ("sqrt", 1.0, 0.0),
        ("none", 0.0, 1.0),
        ("none", 0.5, 1.0),
        ("beta", 0.5, 0.25),  # a = b = 1: 0.5 * 0.5
    ],
)
def test_prompt_weight_values(kind, p, expected):
    assert prompt_weight(p, kind=kind) == pytest.approx(expected)


def test_prompt_weight_beta_exponents():
    # a=2, b=1 at p=0.5: 0.5^2 * 0.5 = 0.125
    assert prompt_weight(0.5, kind="beta", a=2.0, b=1.0) == pytest.approx(0.125)
    # a=1, b=2 at p=0.25: 0.25 * 0.75^2 = 0.25 * 0.5625 = 0.140625
    assert prompt_weight(0.25, kind="beta", a=1.0, b=2.0) == pytest.approx(0.140625)


def test_prompt_weight_frontier_peak_and_range():
    ps = [k / 16 for k in range(17)]
    for kind in PROMPT_WEIGHTS:
        for p in ps:
            assert 0.0 <= prompt_weight(p, kind=kind) <= 1.0
    assert max(ps, key=lambda p: prompt_weight(p, kind="frontier")) == 0.5


def test_prompt_weight_errors():
    with pytest.raises(ValueError, match="unknown prompt weight"):
        prompt_weight(0.5, kind="gaussian")
    with pytest.raises(ValueError, match="pass_rate"):
        prompt_weight(1.5, kind="frontier")
    with pytest.raises(ValueError, match="pass_rate"):
        prompt_weight(-0.1, kind="none")


# ---------------------------------------------------------------- select_longest_wrong


def test_select_basic():
    # correct: 0 (len 5), 2 (len 3) -> witness 2; wrong: 1 (len 7), 3 (len 9) -> longest wrong 3
    sel = select_longest_wrong([5, 7, 3, 9], [True, False, True, False], [False] * 4)
    assert sel == (2, [3])


def test_select_ties_go_to_lowest_index():
    # correct lengths 4, 4 at indices 1, 3 -> witness 1; wrong lengths 8, 8 at indices 0, 2 -> wrong 0
    sel = select_longest_wrong([8, 4, 8, 4], [False, True, False, True], [False] * 4)
    assert sel == (1, [0])


def test_select_all_correct_or_all_wrong_is_none():
    assert select_longest_wrong([3, 4, 5], [True, True, True], [False] * 3) is None
    assert select_longest_wrong([3, 4, 5], [False, False, False], [False] * 3) is None
    assert select_longest_wrong([], [], []) is None


def test_select_single_correct():
    # one correct (index 2) among wrongs of lengths 6, 2, 4 -> witness 2, longest wrong index 0 (len 6)
    assert select_longest_wrong([6, 2, 10, 4], [False, False, True, False], [False] * 4) == (2, [0])


def test_select_truncated_wrong_eligible_by_default_and_excludable():
    lengths = [5, 16, 12, 3]
    correct = [True, False, False, False]
    truncated = [False, True, False, False]  # index 1 hit L_max = 16
    assert select_longest_wrong(lengths, correct, truncated) == (0, [1])
    # excluded: next longest wrong is index 2 (len 12)
    assert select_longest_wrong(lengths, correct, truncated, exclude_truncated=True) == (0, [2])


def test_select_only_truncated_wrong_excluded_is_none():
    assert select_longest_wrong([5, 16], [True, False], [False, True], exclude_truncated=True) is None


def test_select_truncated_flag_ignored_for_correct():
    # a correct completion marked truncated stays eligible as the witness; exclude_truncated only filters wrongs
    assert select_longest_wrong([5, 7], [True, False], [True, False], exclude_truncated=True) == (0, [1])


def test_select_num_wrong_all():
    lengths = [5, 16, 12, 3, 9]
    correct = [False, False, True, False, True]
    truncated = [False, True, False, False, False]
    # witness: correct {2: 12, 4: 9} -> 4; all wrongs in index order
    assert select_longest_wrong(lengths, correct, truncated, num_wrong="all") == (4, [0, 1, 3])
    assert select_longest_wrong(lengths, correct, truncated, num_wrong="all", exclude_truncated=True) == (4, [0, 3])


def test_select_errors():
    with pytest.raises(ValueError, match="equal lengths"):
        select_longest_wrong([1, 2], [True], [False, False])
    with pytest.raises(ValueError, match="num_wrong"):
        select_longest_wrong([1, 2], [True, False], [False, False], num_wrong="two")


# ---------------------------------------------------------------- prefix_length


def test_prefix_length_modes():
    assert prefix_length(20) == 20
    assert prefix_length(20, mode="all", cap=5, witness_len=3) == 20  # other knobs ignored
    assert prefix_length(20, mode="cap", cap=8) == 8
    assert prefix_length(6, mode="cap", cap=8) == 6
    assert prefix_length(20, mode="witness", witness_len=7) == 7
    assert prefix_length(5, mode="witness", witness_len=7) == 5
    assert prefix_length(0, mode="cap", cap=1) == 0


def test_prefix_length_errors():
    with pytest.raises(ValueError, match="cap"):
        prefix_length(10, mode="cap")
    with pytest.raises(ValueError, match="cap"):
        prefix_length(10, mode="cap", cap=0)
    with pytest.raises(ValueError, match="witness_len"):
        prefix_length(10, mode="witness")
    with pytest.raises(ValueError, match="unknown prefix mode"):
        prefix_length(10, mode="half")
