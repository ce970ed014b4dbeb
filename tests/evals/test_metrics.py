"""Tests for sposd/evals/metrics.py: unbiased pass@k against brute force, avg@k / maj@k on crafted samples."""

from __future__ import annotations

import itertools
import math

import pytest

from sposd.evals.metrics import (
    ProblemOutcome,
    macro,
    majority_correct,
    normalize_answer,
    pass_at_k,
    pass_ks,
    summarize,
)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_computed():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == 0.5
    # n=12, c=3, k=4: 1 - C(9,4)/C(12,4) = 1 - 126/495 = 41/55
    assert pass_at_k(12, 3, 4) == pytest.approx(41 / 55)
    # k=1 is c/n; c=0 is 0; n-c < k is 1
    assert pass_at_k(12, 5, 1) == pytest.approx(5 / 12)
    assert pass_at_k(12, 0, 12) == 0.0
    assert pass_at_k(12, 1, 12) == 1.0 and pass_at_k(5, 3, 3) == 1.0


def test_pass_at_k_large_n_is_exact_and_finite():
    # 1 - C(900, 64)/C(1000, 64): exact big-integer ratio, no overflow
    expected = 1 - math.prod((900 - i) / (1000 - i) for i in range(64))
    assert pass_at_k(1000, 100, 64) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_ks_are_powers_of_two_and_k():
    assert pass_ks(1) == [1]
    assert pass_ks(2) == [1, 2]
    assert pass_ks(12) == [1, 2, 4, 8, 12]
    assert pass_ks(16) == [1, 2, 4, 8, 16]
    assert pass_ks(3) == [1, 2, 3]


def test_normalize_answer():
    assert normalize_answer(r"$\dfrac{1}{2}$") == r"\frac{1}{2}"
    assert normalize_answer(r"\left( 1, 2 \right).") == "(1,2)"
    assert normalize_answer(r"10\,000") == "10000"
    assert normalize_answer(r"\tfrac12") == normalize_answer(r"\frac12")


def test_majority_vote_grouping_and_ties():
    # correct answers in any notation are one class: 0.5, \frac12, 1/2 -> 3 votes against 2 for "3"
    assert majority_correct([True, True, True, False, False], ["0.5", r"\frac12", "1/2", "3", "3"])
    # wrong answers group by normalised string: "3", " 3 ", "$3$" -> 3 votes beat 2 correct
    assert not majority_correct([True, True, False, False, False], ["5", "5", "3", " 3 ", "$3$"])
    # 2-2 tie: the class seen first wins
    assert majority_correct([True, False, True, False], ["5", "3", "5", "3"])
    assert not majority_correct([False, True, False, True], ["3", "5", "3", "5"])
    # samples without an answer do not vote: 1 correct vs 0 votes elsewhere
    assert majority_correct([False, False, True], [None, None, "5"])
    assert not majority_correct([False, False], [None, None])


def _outcome(pid, correct, extracted=None, tokens=None, trunc=None):
    n = len(correct)
    return ProblemOutcome(
        id=pid,
        correct=list(correct),
        extracted=list(extracted) if extracted is not None else [("5" if ok else "0") for ok in correct],
        num_tokens=list(tokens) if tokens is not None else [10] * n,
        truncated=list(trunc) if trunc is not None else [False] * n,
    )


def test_summarize_crafted_benchmark():
    # three problems, k = 4:
    #   a: 2/4 correct, answers 5 5 0 0 -> maj: 2-2 tie, correct class first -> 1
    #   b: 0/4 correct                  -> maj 0
    #   c: 4/4 correct                  -> maj 1
    # avg@4 = (2/4 + 0 + 1) / 3 = 0.5
    # pass@2 = (1 - C(2,2)/C(4,2), 0, 1)/3 = (5/6 + 0 + 1)/3 = 11/18
    # pass@4 = (1, 0, 1)/3 = 2/3; maj@4 = (1 + 0 + 1)/3 = 2/3
    probs = [
        _outcome("a", [True, True, False, False], tokens=[10, 20, 30, 40], trunc=[False, False, False, True]),
        _outcome("b", [False] * 4, extracted=["1", None, "2", "3"]),
        _outcome("c", [True] * 4),
    ]
    s = summarize(probs)
    assert (s["k"], s["num_problems"], s["num_samples"]) == (4, 3, 12)
    assert s["avg@k"] == pytest.approx(0.5)
    assert s["pass@k"] == pytest.approx({"1": 0.5, "2": 11 / 18, "4": 2 / 3})
    assert s["maj@k"] == pytest.approx(2 / 3)
    # tokens: a 10+20+30+40 = 100, b and c 8 x 10 = 80 -> 180 / 12 = 15; max 40; 1 truncated of 12
    assert (s["mean_response_tokens"], s["max_response_tokens"]) == (15, 40)
    assert s["truncation_rate"] == pytest.approx(1 / 12)
    assert s["no_answer_rate"] == pytest.approx(1 / 12)
    assert s["per_problem"] == [
        {"id": "a", "correct": 2, "samples": 4},
        {"id": "b", "correct": 0, "samples": 4},
        {"id": "c", "correct": 4, "samples": 4},
    ]
    assert "samples_per_problem" not in s


def test_summarize_unknown_lengths_and_uneven_samples():
    # a: 1/2, b: 1/3 -> avg = (1/2 + 1/3)/2 = 5/12; k = min(2, 3) = 2
    # pass@2: a 1 - C(1,2)/C(2,2) = 1; b 1 - C(2,2)/C(3,2) = 2/3 -> 5/6
    probs = [
        _outcome("a", [True, False], tokens=[None, None], trunc=[None, None]),
        _outcome("b", [False, True, False]),
    ]
    s = summarize(probs)
    assert s["k"] == 2 and s["samples_per_problem"] == {"min": 2, "max": 3}
    assert s["avg@k"] == pytest.approx(5 / 12)
    assert s["pass@k"] == pytest.approx({"1": 5 / 12, "2": 5 / 6})
    assert s["mean_response_tokens"] is None and s["truncation_rate"] is None


def test_macro_is_unweighted_over_benchmarks():
    # avg 0.5 on 1 problem and 0.1 on 10 problems -> macro (0.5 + 0.1)/2 = 0.3 (micro would be 1.5/11)
    one = summarize([_outcome("x", [True, False])])
    ten = summarize([_outcome(f"y{i}", [i == 0, i == 1]) for i in range(10)])
    assert ten["avg@k"] == pytest.approx(0.1)
    m = macro({"one": one, "ten": ten})
    assert m["benchmarks"] == ["one", "ten"]
    assert m["avg@k"] == pytest.approx(0.3)
    assert set(m["pass@k"]) == {"1", "2"}
