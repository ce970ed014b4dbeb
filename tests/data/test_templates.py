"""Tests for sposd/data/templates.py: student and OPSD privileged messages, rendered prompt ids."""

from __future__ import annotations

import pytest

from sposd.data.templates import (
    MATH_INSTRUCTION,
    TOY_INSTRUCTION,
    build_privileged_message,
    build_user_message,
    make_prompt,
    render_prompt_ids,
)
from sposd.models.tokenizer import build_char_tokenizer
from sposd.types import Prompt


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_user_message():
    assert build_user_message("Compute 1+2.", instruction=TOY_INSTRUCTION) == (
        "Problem: Compute 1+2.\n\nPut the final answer in \\boxed{}.")
    assert build_user_message("x?") == "Problem: x?\n\n" + MATH_INSTRUCTION


def test_privileged_message_is_the_opsd_teacher_prompt():
    # the exact string of ALGORITHMS.md section 2 (siyan-zhao/OPSD, reason_first=False)
    expected = (
        "P\n\nHere is a reference solution to this problem:\nS\n\n\nAfter understanding the reference solution "
        "and the rationale behind each step, now articulate your own step-by-step reasoning that derives the same "
        "final answer to the problem below:\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert build_privileged_message("P", "S", instruction=MATH_INSTRUCTION) == expected
    assert build_privileged_message("P", "S", instruction=TOY_INSTRUCTION).endswith("below:\n\n" + TOY_INSTRUCTION)


@pytest.mark.parametrize("thinking", [False, True])
def test_render_prompt_ids(tok, thinking):
    ids = render_prompt_ids(tok, "Hi", enable_thinking=thinking)
    tail = "<|im_start|>assistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    assert tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n" + tail


def test_make_prompt(tok):
    rec = {"id": 7, "problem": "Compute 1+2.", "answer": 3, "solution": "1+2=3. \\boxed{3}", "source": "toy"}
    p = make_prompt(rec, tok, instruction=TOY_INSTRUCTION, enable_thinking=False)
    assert isinstance(p, Prompt)
    assert (p.id, p.problem, p.answer, p.solution, p.meta) == ("7", "Compute 1+2.", "3", rec["solution"],
                                                              {"source": "toy"})
    assert tok.decode(p.prompt_ids) == (
        "<|im_start|>user\nProblem: Compute 1+2.\n\nPut the final answer in \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert make_prompt({"id": "a", "problem": "q", "answer": "1"}, tok).solution is None
