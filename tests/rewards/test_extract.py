"""Tests for sposd/rewards/extract.py: last-boxed extraction, `Answer:` fallback, linear time."""

from __future__ import annotations

import time

import pytest

from sposd.rewards.extract import extract_answer, extract_last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{2}}{2^{3}}} done", r"\frac{\sqrt{2}}{2^{3}}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{ 3 }", "3"),
        (r"\boxed{1} and \fbox{7}", "7"),
        (r"\fbox{7} and \boxed{1}", "1"),
        (r"The answer is $\boxed 5$.", "5"),
        (r"The answer is \boxed 5.", "5"),
        (r"\boxed   0.25, I think", "0.25"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # escaped brace does not open a group
        (r"\boxed{a \\ b}", r"a \\ b"),  # `\\` is a line break, not an escaped brace
        (r"\boxed{}", ""),
        (r"\boxed{1} then a truncated \boxed{\frac{1}{2", None),  # the LAST box is unbalanced
        (r"\boxed{{1}", None),
        ("no box here", None),
        ("", None),
        (r"\boxed", None),
        (r"\boxedx{5}", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reasoning...\nAnswer: 42", "42"),
        ("reasoning...\nAnswer: $\\frac{1}{2}$.\n\n  ", r"\frac{1}{2}"),
        ("reasoning...\n**Answer:** 7", "7"),
        ("reasoning...\nanswer : 7", "7"),
        ("Answer: 3\n\\boxed{4}", "4"),  # a box wins over the answer line
        ("Answer: 3\nbut wait, maybe not", None),  # only the final line counts
        ("reasoning...\nAnswer:", None),
        ("no answer at all", None),
    ],
)
def test_extract_answer_line_fallback(text, expected):
    assert extract_answer(text) == expected


def test_answer_line_fallback_can_be_disabled():
    assert extract_answer("reasoning\nAnswer: 42", answer_line_fallback=False) is None
    assert extract_answer(r"\boxed{42}", answer_line_fallback=False) == "42"


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",  # 10k nested braces
        "\\boxed{" * 200_000,  # 1.4 MB of unclosed boxes
        "x" * 1_000_000 + "\\boxed{5}",
        "{" * 1_000_000,
        " " * 1_000_000 + "\nAnswer: " + " " * 1_000_000,
        "\\boxed " + "1" * 1_000_000,
        "\n" * 1_000_000,
        "\\" * 1_000_000 + "\\boxed{" + "\\{" * 500_000,
    ],
)
def test_extraction_is_fast_on_huge_inputs(text):
    # CPU time, not wall time, so a loaded machine does not fail it; linear passes over these 1-2 MB inputs take
    # ~10-100 ms, a quadratic one would take hours, so the generous bound still separates the two
    start = time.process_time()
    extract_answer(text)
    assert time.process_time() - start < 5.0


def test_nested_braces_are_matched():
    depth = 10_000
    assert (
        extract_last_boxed("\\boxed{" + "{" * depth + "1" + "}" * depth + "}")
        == "{" * depth + "1" + "}" * depth
    )
