"""The toy task's solution styles (data.solution_style) and the warm start's teacher-message formats."""

import random

import pytest

from sposd.data import teacher_formats as tf
from sposd.data.templates import (
    build_concise_message,
    build_reviser_message,
    build_teacher_message,
    build_user_message,
)
from sposd.data.toy import (
    make_problem,
    parse_problem,
    toy_records,
    with_solution_style,
    worked_solution,
)

INSTR = "Put the final answer in \\boxed{}."


def test_worked_solutions_hand_computed():
    # 12 + 7 = 19, 19 - 15 = 4
    assert worked_solution([12, 7, 15], ["+", "-"], style="own") == "12+7=19. 19-15=4. \\boxed{4}"
    assert worked_solution([12, 7, 15], ["+", "-"], style="foreign") == "19 = 12 + 7; 4 = 19 - 15; answer 4"
    # 3 - 15 = -12, -12 + 5 = -7
    assert worked_solution([3, 15, 5], ["-", "+"], style="own") == "3-15=-12. -12+5=-7. \\boxed{-7}"
    assert worked_solution([3, 15, 5], ["-", "+"], style="foreign") == "-12 = 3 - 15; -7 = -12 + 5; answer -7"
    # two terms: 0 - 19 = -19
    assert worked_solution([0, 19], ["-"], style="foreign") == "-19 = 0 - 19; answer -19"
    with pytest.raises(ValueError, match="choose from"):
        worked_solution([1, 2], ["+"], style="none")


def test_make_problem_keeps_its_own_style_record():
    rec = make_problem([12, 7, 15], ["+", "-"])
    assert (rec["problem"], rec["answer"], rec["solution"]) == ("Compute 12+7-15.", "4", "12+7=19. 19-15=4. \\boxed{4}")
    assert parse_problem(rec["problem"]) == ([12, 7, 15], ["+", "-"])
    with pytest.raises(ValueError, match="not a toy problem"):
        parse_problem("What is 2+2?")


def test_styles_change_only_the_solution():
    own = toy_records(50, seed=3)
    foreign = toy_records(50, seed=3, solution_style="foreign")
    none = toy_records(50, seed=3, solution_style="none")
    for o, f, n in zip(own, foreign, none, strict=True):
        assert o["problem"] == f["problem"] == n["problem"] and o["answer"] == f["answer"] == n["answer"]
        assert n["solution"] is None
        assert f["solution"].endswith(f"; answer {o['answer']}") and "boxed" not in f["solution"]
        assert o["solution"].endswith(f"\\boxed{{{o['answer']}}}")
        assert with_solution_style(o, "foreign") == f
    with pytest.raises(ValueError, match="data.solution_style='mine' is not valid"):
        toy_records(1, solution_style="mine")


def test_foreign_solutions_are_correct_arithmetic():
    for rec in toy_records(200, seed=1, solution_style="foreign"):
        for step in rec["solution"].split("; ")[:-1]:
            result, expr = step.split(" = ")
            a, op, b = expr.split(" ")
            assert int(result) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_each_format_uses_the_teacher_contexts_builders():
    rec = make_problem([12, 7, 15], ["+", "-"])
    own, foreign = rec["solution"], "19 = 12 + 7; 4 = 19 - 15; answer 4"
    rng = random.Random(0)
    assert tf.teacher_message(rec, "student", rng, instruction=INSTR) == build_user_message(rec["problem"],
                                                                                            instruction=INSTR)
    for wrapper in ("opsd", "sdpo", "sdpo_exact"):
        for style, text in (("own", own), ("foreign", foreign)):
            got = tf.teacher_message(rec, wrapper, rng, instruction=INSTR, style=style)
            assert got == build_teacher_message(rec["problem"], text, wrapper=wrapper, instruction=INSTR)
    assert tf.teacher_message(rec, "reviser", rng, instruction=INSTR, verdict=True) == build_reviser_message(
        rec["problem"], own, correct=True)
    assert tf.teacher_message(rec, "concise", rng, instruction=INSTR) == build_concise_message(rec["problem"])
    with pytest.raises(ValueError, match="unknown warm-start format"):
        tf.teacher_message(rec, "socratic", rng, instruction=INSTR)


def test_wrong_attempt_is_consistent_but_wrong():
    rec = make_problem([12, 7, 15], ["+", "-"])
    rng = random.Random(0)
    for _ in range(50):
        text = tf.wrong_attempt(rec, rng)
        assert not text.endswith("\\boxed{4}")
        msg = tf.teacher_message(rec, "reviser", rng, instruction=INSTR, verdict=False)
        assert "is incorrect" in msg


def test_format_shares():
    # privileged_frac 0.4: 60% student; of the privileged 40%, opsd 30% -> 12% of all, concise 15% -> 6%
    assert sum(tf.TEACHER_FORMATS.values()) == pytest.approx(1.0)
    rng = random.Random(0)
    n = 20_000
    picks = [tf.pick_format(rng, 0.4) for _ in range(n)]
    assert picks.count("student") / n == pytest.approx(0.6, abs=0.015)
    assert picks.count("opsd") / n == pytest.approx(0.12, abs=0.01)
    assert picks.count("concise") / n == pytest.approx(0.06, abs=0.008)
    assert set(picks) == {"student", *tf.TEACHER_FORMATS}
