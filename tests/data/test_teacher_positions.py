"""Teacher sequences [context | completion] never run past the model's positions: refused and counted."""

from __future__ import annotations

from sposd.algos.base import TeacherContext
from sposd.data.teacher import TeacherPrompts, fits_positions
from sposd.models.tokenizer import build_char_tokenizer
from sposd.types import Prompt


def test_fits_positions_counts_context_plus_completion():
    assert fits_positions(30, 10, 40)  # 30 + 10 = 40 positions: the last one is the model's last
    assert not fits_positions(30, 11, 40)  # 41 > 40
    assert fits_positions(10**6, 10**6, None)  # unknown context length: not checked


def test_render_context_refuses_and_counts_a_sequence_past_the_positions():
    tok = build_char_tokenizer()
    prompt = Prompt(id="p", problem="1+1", answer="2", prompt_ids=[5, 6, 7])
    ctx = TeacherContext(kind="splice", text="abcd")  # 3 prompt ids + 4 char tokens = 7 context tokens
    teacher = TeacherPrompts(tok, instruction="", enable_thinking=False, max_positions=10)
    assert len(teacher.render_context(prompt, ctx, completion_len=3)) == 7  # 7 + 3 = 10: fits
    assert teacher.past_positions == 0
    assert teacher.render_context(prompt, ctx, completion_len=4) is None  # 7 + 4 = 11 > 10
    assert teacher.past_positions == 1
    unlimited = TeacherPrompts(tok, instruction="", enable_thinking=False)
    assert unlimited.render_context(prompt, ctx, completion_len=10**6) is not None
