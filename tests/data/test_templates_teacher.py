"""Tests for the teacher-side helpers of sposd/data/templates.py: wrappers, thinking removal, stripped student
prompts and PAINT's truncated reference."""

from __future__ import annotations

import pytest

from sposd.data.templates import (
    CONCISE_TEMPLATE,
    HIDDEN_MARKER,
    MATH_INSTRUCTION,
    TOY_INSTRUCTION,
    build_privileged_message,
    build_teacher_message,
    render_prompt_ids,
    strip_thinking,
    stripped_template_ids,
    truncate_reference,
)
from sposd.models.tokenizer import build_char_tokenizer

TOY_SOLUTION = "12+7=19. 19-15=4. \\boxed{4}"  # 27 characters = 27 char-tokenizer tokens


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


# ---------------------------------------------------------------- build_teacher_message


def test_opsd_wrapper_is_the_privileged_message():
    for instr in (MATH_INSTRUCTION, TOY_INSTRUCTION):
        assert build_teacher_message("P", "S", instruction=instr) == build_privileged_message(
            "P", "S", instruction=instr
        )
        assert build_teacher_message("P", "S", wrapper="opsd", instruction=instr) == build_privileged_message(
            "P", "S", instruction=instr
        )


def test_sdpo_wrapper():
    assert build_teacher_message("P", "S", wrapper="sdpo", instruction=TOY_INSTRUCTION) == (
        "P\nCorrect solution:\n\nS\n\nCorrectly solve the original question.\n\nPut the final answer in \\boxed{}."
    )
    assert build_teacher_message("P", "S", wrapper="sdpo", instruction="") == (
        "P\nCorrect solution:\n\nS\n\nCorrectly solve the original question."
    )


def test_sdpo_exact_wrapper_is_sdpo_reprompt_around_the_student_message():
    # SDPO: reprompt = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.", solution =
    # "\nCorrect solution:\n\n{successful_previous_attempt}", {prompt} = the student's user message, no feedback
    assert build_teacher_message("12+7", "S", wrapper="sdpo_exact", instruction=TOY_INSTRUCTION) == (
        "Problem: 12+7\n\nPut the final answer in \\boxed{}.\nCorrect solution:\n\nS\n\n"
        "Correctly solve the original question."
    )


def test_reviser_and_concise_messages():
    from sposd.data.templates import build_concise_message, build_reviser_message

    assert build_reviser_message("P", "A", correct=True) == (
        "P\n\nHere is a previous attempt:\nA\n\nThe final answer of this attempt is correct. "
        "Write an improved, correct solution."
    )
    assert "is incorrect." in build_reviser_message("P", "A", correct=False)
    msg = build_concise_message("Compute 1+1.")
    assert msg.startswith("Solve the following math problem concisely and correctly. Be direct \u2014 avoid")
    assert msg.endswith('\n\nCompute 1+1.\n\nRemember to put your answer on its own line after "Answer:".')
    assert msg == CONCISE_TEMPLATE.format(question="Compute 1+1.")


def test_render_context_kinds(tok):
    from sposd.algos.base import TeacherContext
    from sposd.data.teacher import TeacherPrompts
    from sposd.types import Prompt

    tp = TeacherPrompts(tok, instruction=TOY_INSTRUCTION, enable_thinking=False, wrapper="sdpo_exact", max_len=768)
    prompt = Prompt(id="p", problem="Compute 2+2.", prompt_ids=[1, 2, 3], answer="4")
    # CEPO's splice: the student's prompt ids (assistant header included), then the tokens of " 4"
    assert tp.render_context(prompt, TeacherContext("splice", " 4")) == [1, 2, 3, *tok.encode(" 4")]
    wrap = tp.render_context(prompt, TeacherContext("wrap", "W"))
    assert wrap == render_prompt_ids(
        tok,
        build_teacher_message("Compute 2+2.", "W", wrapper="sdpo_exact", instruction=TOY_INSTRUCTION),
        enable_thinking=False,
    )
    rev = tok.decode(tp.render_context(prompt, TeacherContext("reviser", "att", verdict=False)))
    assert "Here is a previous attempt:\natt" in rev and "is incorrect." in rev
    assert tp.render_context(prompt, TeacherContext("concise", "")) is not None
    short = TeacherPrompts(tok, instruction=TOY_INSTRUCTION, enable_thinking=False, max_len=10)
    assert short.render_context(prompt, TeacherContext("concise", "")) is None  # longer than max_len: refused
    # ATESD's exposure: the first ceil(rho n) reference tokens, recorded as the reveal ratio
    assert tp.cut_reference([5], "ABCDEFGHIJ", 0.3) == "ABC" and tp.last_rho == [0.3]


def test_unknown_wrapper():
    with pytest.raises(ValueError, match="teacher wrapper"):
        build_teacher_message("P", "S", wrapper="sft")


# ---------------------------------------------------------------- strip_thinking


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nlet me see\n</think>\n\n12+7=19. \\boxed{4}\n", "12+7=19. \\boxed{4}"),
        ("<think>\n\n</think>\n\nanswer 4", "answer 4"),  # the empty block of enable_thinking=False
        ("a <think>x</think> b <think>y\nz</think> c", "a  b  c"),  # several blocks, inner whitespace kept
        ("answer 4 <think>cut off mid-thought", "answer 4"),  # unclosed trailing block
        ("<think>only thinking, never closed", ""),
        ("reasoning pre-filled by the template</think>\n\nanswer 4", "answer 4"),  # orphan close tag
        ("  no tags here \n", "no tags here"),
        ("", ""),
    ],
)
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


# ---------------------------------------------------------------- stripped_template_ids


@pytest.mark.parametrize("thinking", [False, True])
def test_stripped_template_ids_removes_chatml_tokens(tok, thinking):
    ids = render_prompt_ids(tok, "Problem: Q\n\nI", enable_thinking=thinking)
    out = stripped_template_ids(tok, ids)
    # <|im_start|> / <|im_end|> are special and dropped; <think> tags are not special and stay
    expected = "user\nProblem: Q\n\nI\nassistant\n" + ("" if thinking else "<think>\n\n</think>\n\n")
    assert tok.decode(out) == expected
    assert out == list(tok.encode(expected, add_special_tokens=False))
    # dropped: <|im_start|>, <|im_end|> around the user turn + <|im_start|> of the assistant turn = 3 ids
    assert len(out) == len(ids) - 3


def test_char_tokenizer_round_trips_toy_solution(tok):
    ids = tok.encode(TOY_SOLUTION, add_special_tokens=False)
    assert len(ids) == len(TOY_SOLUTION) == 27
    assert tok.decode(ids) == TOY_SOLUTION


# ---------------------------------------------------------------- truncate_reference


def test_truncate_tokens(tok):
    # n = 27 tokens, rho = 0.5 -> ceil(13.5) = 14 characters
    assert truncate_reference(tok, TOY_SOLUTION, 0.5) == "12+7=19. 19-15"
    # rho = 0.25 -> ceil(6.75) = 7
    assert truncate_reference(tok, TOY_SOLUTION, 0.25) == "12+7=19"
    assert truncate_reference(tok, TOY_SOLUTION, 0.5, marker=True) == "12+7=19. 19-15\n" + HIDDEN_MARKER
    assert HIDDEN_MARKER == "(the rest of the solution is hidden)"


def test_truncate_full_reveal_is_unchanged(tok):
    assert truncate_reference(tok, TOY_SOLUTION, 1.0) == TOY_SOLUTION
    assert truncate_reference(tok, TOY_SOLUTION, 1.0, marker=True) == TOY_SOLUTION  # nothing dropped: no marker
    assert truncate_reference(tok, TOY_SOLUTION, 1.0, unit="lines", marker=True) == TOY_SOLUTION
    assert truncate_reference(tok, "", 0.5, marker=True) == ""


def test_truncate_lines(tok):
    sol = "Step 1: 12+7=19.\nStep 2: 19-15=4.\nStep 3: check.\n\\boxed{4}\n"  # 4 lines
    # rho = 0.5 -> ceil(2.0) = 2 lines, last kept line break dropped
    assert truncate_reference(tok, sol, 0.5, unit="lines") == "Step 1: 12+7=19.\nStep 2: 19-15=4."
    # rho = 0.3 -> ceil(1.2) = 2 lines
    assert truncate_reference(tok, sol, 0.3, unit="lines") == "Step 1: 12+7=19.\nStep 2: 19-15=4."
    # rho = 0.25 -> ceil(1.0) = 1 line
    assert truncate_reference(tok, sol, 0.25, unit="lines", marker=True) == "Step 1: 12+7=19.\n" + HIDDEN_MARKER


def test_truncate_nothing_kept_marker_only(tok):
    assert truncate_reference(tok, TOY_SOLUTION, 0.0) == ""
    assert truncate_reference(tok, TOY_SOLUTION, 0.0, marker=True) == HIDDEN_MARKER


def test_truncate_unknown_unit(tok):
    with pytest.raises(ValueError, match="reference unit"):
        truncate_reference(tok, TOY_SOLUTION, 0.5, unit="sentences")
