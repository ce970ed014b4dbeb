"""Tests for sposd/ops/overlap.py: bit-parallel LCS against a DP reference, overlap metrics, PAINT reveal ratio."""

from __future__ import annotations

import random
import time

import pytest

from sposd.ops.overlap import anchor_recall, lcs_length, overlap, reference_anchors, reveal_count, reveal_ratio


def lcs_dp(a, b) -> int:
    """The textbook O(len(a) * len(b)) dynamic program."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------- lcs_length


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0),
        ("abc", "", 0),
        ("", "abc", 0),
        ("abc", "abc", 3),
        ("abc", "def", 0),
        ("ABCBDAB", "BDCABA", 4),  # CLRS example: "BCBA"
        ("aaaa", "aa", 2),
        ("abab", "baba", 3),  # "bab" or "aba"
    ],
)
def test_lcs_hand_examples(a, b, expected):
    assert lcs_length(a, b) == expected
    assert lcs_length(b, a) == expected


def test_lcs_matches_dp_on_random_cases():
    rng = random.Random(0)
    for _ in range(600):
        alphabet = rng.randint(1, 5)  # small alphabets force many repeated symbols
        a = [rng.randrange(alphabet) for _ in range(rng.randint(0, 40))]
        b = [rng.randrange(alphabet) for _ in range(rng.randint(0, 70))]  # some longer than 64 bits
        assert lcs_length(a, b) == lcs_dp(a, b), (a, b)


def test_lcs_hashable_elements():
    assert lcs_length(("x", 1, (2, 3)), [(2, 3), "x", 1]) == 2  # "x", 1


def test_lcs_speed_4k():
    rng = random.Random(1)
    a = [rng.randrange(1000) for _ in range(4096)]
    b = [rng.randrange(1000) for _ in range(4096)]
    t0 = time.perf_counter()
    lcs_length(a, b)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------- overlap


def test_overlap_lcs_recall():
    # reference [1,2,3,4], rollout [1,3,5,4]: LCS = [1,3,4] -> 3 / 4 = 0.75
    assert overlap([1, 3, 5, 4], [1, 2, 3, 4]) == pytest.approx(0.75)
    # recall, not precision: a long rollout containing the reference covers it fully
    assert overlap([9, 1, 9, 2, 9, 3], [1, 2, 3]) == 1.0
    assert overlap([7, 8], [1, 2, 3]) == 0.0


def test_overlap_unigram_recall_is_clipped():
    # reference counts {1: 2, 2: 1, 3: 1} (4 unigrams); rollout counts {1: 3, 3: 1}
    # matches min(2,3) + min(1,0) + min(1,1) = 3 -> 3 / 4
    assert overlap([1, 1, 1, 3], [1, 2, 1, 3], metric="unigram_recall") == pytest.approx(0.75)
    # order does not matter for unigrams
    assert overlap([3, 2, 1], [1, 2, 3], metric="unigram_recall") == 1.0


def test_overlap_bigram_recall():
    # reference bigrams (1,2), (2,3), (3,4); rollout [1,2,4,3,4] bigrams (1,2), (2,4), (4,3), (3,4)
    # matched (1,2), (3,4) -> 2 / 3
    assert overlap([1, 2, 4, 3, 4], [1, 2, 3, 4], metric="bigram_recall") == pytest.approx(2 / 3)
    # repeated reference bigram (1,1) twice, rollout has it once -> clipped: ref [1,1,1] bigrams {(1,1): 2},
    # rollout [1,1] bigrams {(1,1): 1} -> 1 / 2
    assert overlap([1, 1], [1, 1, 1], metric="bigram_recall") == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["lcs_recall", "unigram_recall", "bigram_recall"])
def test_overlap_empty_reference_is_covered(metric):
    assert overlap([1, 2], [], metric=metric) == 1.0
    assert overlap([], [], metric=metric) == 1.0


def test_overlap_short_reference_bigram_and_empty_rollout():
    assert overlap([5, 6], [1], metric="bigram_recall") == 1.0  # fewer than 2 reference tokens
    assert overlap([], [1, 2], metric="lcs_recall") == 0.0
    assert overlap([], [1, 2], metric="unigram_recall") == 0.0
    assert overlap([], [1, 2], metric="bigram_recall") == 0.0


def test_overlap_unknown_metric():
    with pytest.raises(ValueError, match="unknown overlap metric"):
        overlap([1], [1], metric="rouge_1")


# ---------------------------------------------------------------- reveal_ratio / reveal_count


def test_reveal_ratio_more_when_close():
    assert reveal_ratio(0.0, direction="more_when_close") == pytest.approx(0.25)  # floor rho_min
    assert reveal_ratio(1.0, direction="more_when_close") == pytest.approx(1.0)
    assert reveal_ratio(0.5, direction="more_when_close") == pytest.approx(0.625)  # 0.25 + 0.75 * 0.5
    assert reveal_ratio(0.2, rho_min=0.5, direction="more_when_close") == pytest.approx(0.6)  # 0.5 + 0.5 * 0.2


def test_reveal_ratio_more_when_far():
    assert reveal_ratio(0.0, direction="more_when_far") == pytest.approx(1.0)
    assert reveal_ratio(1.0, direction="more_when_far") == pytest.approx(0.25)
    assert reveal_ratio(0.2, direction="more_when_far") == pytest.approx(0.85)  # 0.25 + 0.75 * 0.8


def test_reveal_ratio_clips():
    assert reveal_ratio(1.5, direction="more_when_close") == 1.0
    assert reveal_ratio(-1.0, rho_min=0.3, direction="more_when_close") == pytest.approx(0.3)
    assert reveal_ratio(0.7, rho_min=1.0, direction="more_when_close") == 1.0
    assert reveal_ratio(0.7, rho_min=0.0, direction="more_when_close") == pytest.approx(0.7)


def test_reveal_ratio_errors():
    with pytest.raises(ValueError, match="rho_min"):
        reveal_ratio(0.5, rho_min=1.5)
    with pytest.raises(ValueError, match="rho_min"):
        reveal_ratio(0.5, rho_min=-0.1)
    with pytest.raises(ValueError, match="direction"):
        reveal_ratio(0.5, direction="sideways")


def test_reveal_count():
    assert 0.28 * 25 > 7  # 7.000000000000001: the float error the epsilon guards against
    assert reveal_count(25, 0.28) == 7
    assert reveal_count(100, 0.07) == 7  # 0.07 * 100 = 7.000000000000001
    assert reveal_count(10, 0.3) == 3
    assert reveal_count(10, 0.25) == 3  # ceil(2.5)
    assert reveal_count(10, 1.0) == 10
    assert reveal_count(10, 0.0) == 0
    assert reveal_count(10, 1.2) == 10  # clipped to n
    assert reveal_count(10, -0.5) == 0  # clipped to 0
    assert reveal_count(0, 0.5) == 0
    assert reveal_count(27, 0.5) == 14  # ceil(13.5)
    assert reveal_count(7, 0.1) == 1  # ceil(0.7)


# ---------------------------------------------------------------- anchor_recall (PAINT's overlap, spec 15 box)
REF = r"Since $x^2 = 16$ and $x > 0$, we get $x = 4$. So 1,000 apples cost 4.50 each: \boxed{4}"


def test_reference_anchors_hand_listed():
    texts, numbers = reference_anchors(REF)
    # formulas (whitespace removed) + the last boxed answer "4"; numbers: 2, 16, 0, 4, 1000, 4.5
    assert texts == {"x^2=16", "x>0", "x=4", "4"}
    assert numbers == {"2", "16", "0", "4", "1000", "4.5"}


def test_anchor_recall_hand_computed():
    # anchors: 4 textual + 6 numbers = 10. The rollout has "x = 4" (x=4 and 4 as substrings), numbers {4, 1000}:
    # textual found: x=4, 4 -> 2; numbers found: 4, 1000 -> 2; o = 4 / 10
    assert anchor_recall("I think x = 4, about 1000 of them", REF) == pytest.approx(0.4)
    assert anchor_recall("no idea", REF) == 0.0
    assert anchor_recall(REF, REF) == 1.0
    # a number matches as a whole number: 16 does not contain the anchor "1000"; "41" is not "4"
    assert anchor_recall("41", r"the answer is 4") == 0.0
    assert anchor_recall("anything", "no anchors here") == 1.0  # nothing to recall


def test_anchor_recall_normalises_formulas_and_numbers():
    ref = r"We need \( \left( a + b \right) \) which is 2.50"
    assert anchor_recall("so (a+b) = 2.5", ref) == 1.0
