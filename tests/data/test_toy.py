"""Tests for sposd/data/toy.py: determinism, disjoint splits, answers and worked solutions that check out."""

from __future__ import annotations

import re

import pytest

from sposd.data.toy import make_problem, space_size, split_of, toy_records


def test_format():
    rec = make_problem([12, 7, 15], ["+", "-"])
    assert rec["problem"] == "Compute 12+7-15."
    assert rec["solution"] == "12+7=19. 19-15=4. \\boxed{4}"
    assert rec["answer"] == "4"
    assert rec["id"].startswith("toy-")
    assert make_problem([3, 15], ["-"])["solution"] == "3-15=-12. \\boxed{-12}"


def test_deterministic_and_prefix_stable():
    a = toy_records(300, seed=1)
    assert a == toy_records(300, seed=1)
    assert toy_records(100, seed=1) == a[:100]
    assert a != toy_records(300, seed=2)
    assert len({r["problem"] for r in a}) == 300  # distinct within a call
    assert len({r["id"] for r in a}) == 300


def test_splits_never_share_a_problem():
    train = toy_records(5000, seed=0, split="train")
    heldout = toy_records(1000, seed=7, split="heldout")
    assert not {r["problem"] for r in train} & {r["problem"] for r in heldout}
    assert all(split_of(r["problem"]) == "heldout" for r in heldout)
    assert all(split_of(r["problem"]) == "train" for r in train)


@pytest.mark.parametrize("knobs", [{}, {"max_operand": 99, "min_terms": 2, "max_terms": 4}, {"max_operand": 9}])
def test_answers_and_steps_are_consistent(knobs):
    for rec in toy_records(400, seed=0, **knobs) + toy_records(100, seed=0, split="heldout", **knobs):
        expr = re.fullmatch(r"Compute ([0-9+-]+)\.", rec["problem"]).group(1)
        terms = re.findall(r"\d+", expr)
        assert int(rec["answer"]) == eval(expr)  # only digits and + / - here
        assert all(0 <= int(t) <= knobs.get("max_operand", 19) for t in terms)
        assert knobs.get("min_terms", 2) <= len(terms) <= knobs.get("max_terms", 3)
        steps = re.findall(r"(-?\d+)([+-])(\d+)=(-?\d+)\.", rec["solution"])
        assert len(steps) == len(terms) - 1
        for a, op, b, c in steps:
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert rec["solution"].endswith(f"\\boxed{{{rec['answer']}}}")


def test_default_size_and_errors():
    assert space_size() == 20**2 * 2 + 20**3 * 4
    assert len(toy_records(seed=0)) == 1_500
    with pytest.raises(ValueError, match="split"):
        toy_records(5, split="test")
    with pytest.raises(ValueError, match="at most"):
        toy_records(100_000, split="heldout")
    with pytest.raises(ValueError, match="min_terms"):
        toy_records(5, min_terms=1)


def test_default_training_set_has_the_heldout_sets_term_mix():
    # ~80 two-term held-out problems exist, so 200 held-out problems are ~1/3 two-term; the default training set
    # must not drift to almost only three-term problems (10,000 distinct records: 7%)
    def two_term_share(recs):
        return sum(r["problem"].count("+") + r["problem"].count("-") == 1 for r in recs) / len(recs)

    for seed in (0, 1):
        train, heldout = toy_records(seed=seed), toy_records(200, seed=seed, split="heldout")
        assert abs(two_term_share(train) - two_term_share(heldout)) < 0.05


def test_slipped_solution_by_hand():
    import random

    from sposd.data.toy import slipped_solution, worked_solution

    # 12+7-15: the correct steps are 19 and 4. A slip of d at step 0 gives 19+d, then 19+d-15 = 4+d; a slip at
    # step 1 keeps 19 and gives 4+d. d is in {-2, -1, 1, 2}.
    seen = set()
    rng = random.Random(0)
    for _ in range(200):
        s = slipped_solution([12, 7, 15], ["+", "-"], rng)
        m = re.fullmatch(r"12\+7=(-?\d+)\. (-?\d+)-15=(-?\d+)\. \\boxed\{(-?\d+)\}", s)
        assert m, s
        r0, left, r1, boxed = (int(g) for g in m.groups())
        assert left == r0 and boxed == r1  # later steps follow the wrong value
        assert (r0 == 19 and r1 - 4 in (-2, -1, 1, 2)) or (r0 - 19 in (-2, -1, 1, 2) and r1 == r0 - 15)
        seen.add((r0 != 19, r1 - 4))
    assert len(seen) == 8  # every step and every offset occurs
    assert worked_solution([12, 7, 15], ["+", "-"]) == "12+7=19. 19-15=4. \\boxed{4}"  # clean one unchanged
