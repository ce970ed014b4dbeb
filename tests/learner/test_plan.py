"""The step plan (pure, no DeepSpeed): micro-batches, normalisers and the schedule of passes every rank runs."""

from __future__ import annotations

import pytest

from sposd.learner.batching import LearnerSample
from sposd.learner.plan import (
    PassShape,
    Row,
    build_step_plan,
    local_micro_batches,
    logp_schedule,
    student_ops,
    summarize,
)

DENSE = PassShape(has_teacher=True, teacher_distinct=False, sparse=False, prepass=False, score_contexts=0)
TIP = PassShape(has_teacher=True, teacher_distinct=True, sparse=True, prepass=True, score_contexts=0)
CEPO = PassShape(has_teacher=True, teacher_distinct=False, sparse=False, prepass=False, score_contexts=2)


def _rows(spec):  # (context, completion, distilled, kept)
    return [Row(c, t, d, k, distill_units=float(t) if d else 0.0) for c, t, d, k in spec]


def _plans(per_rank, shape, budget=40):
    mbs = [local_micro_batches(rows, budget) for rows in per_rank]
    summaries = [summarize(rows, m) for rows, m in zip(per_rank, mbs, strict=True)]
    return [build_step_plan(m, summaries, shape) for m in mbs]


RANK0 = _rows([(4, 10, True, True), (4, 12, False, True), (6, 20, True, False), (3, 2, False, True)])
RANK1 = _rows([(4, 5, False, True)])


def test_uneven_ranks_get_the_same_schedule_and_their_own_rows():
    for shape in (DENSE, TIP, CEPO):
        p0, p1, p2 = _plans([RANK0, RANK1, []], shape)
        assert p0.passes == p1.passes == p2.passes  # the same collectives, in the same order
        assert p0.teacher_at == p1.teacher_at == p2.teacher_at
        # budget 40: rank 0 packs (3+2),(4+10) -> 2 x 14; (4+12) joins -> 3 x 16 = 48 > 40, new micro-batch;
        # (6+20) would make 2 x 26 = 52 -> its own. So 3 micro-batches; rank 1 has one, rank 2 none.
        assert [len(r) for r in p0.rows] == [2, 1, 1] and p0.num_micro_batches == 3
        assert p1.rows == ((0,), (), ()) and p2.rows == ((), (), ())
        assert p0.rows[0] == (0, 3)  # the distilled row first


def test_normalisers_are_global_and_count_kept_rows_only():
    p0, p1 = _plans([RANK0, RANK1], DENSE)
    # kept rows: rank 0 completions 10 + 12 + 2 = 24 tokens in 3 rows, rank 1: 5 in 1
    assert (p0.num_tokens, p0.num_seqs) == (29.0, 4.0) == (p1.num_tokens, p1.num_seqs)
    assert p0.distill_units == 10.0 + 20.0  # distilled rows, kept or not


def test_teacher_passes_where_any_rank_distils_and_their_ops():
    p0, _ = _plans([RANK0, RANK1], TIP)
    assert p0.teacher_at == (True, False, True)
    kinds = [(p.kind, p.micro_batch) for p in p0.passes]
    # the prepass over every teacher micro-batch first, then per micro-batch: teacher, student
    assert kinds == [("prepass", 0), ("prepass", 2), ("teacher", 0), ("student", 0), ("student", 1),
                     ("teacher", 2), ("student", 2)]
    assert p0.at(0, "student")[0].ops == student_ops(TIP, teacher_here=True)
    assert ("gather_head", "teacher") not in p0.at(1, "student")[0].ops  # no teacher pass at micro-batch 1
    assert p0.at(0, "prepass")[0].ops == (
        ("hidden", "teacher"), ("hidden", "policy"), ("gather_head", "teacher"), ("gather_head", "policy")
    )


def test_scoring_contexts_add_k_passes_per_micro_batch():
    p0, _ = _plans([RANK0, RANK1], CEPO)
    assert [p.k for p in p0.passes if p.kind == "score" and p.micro_batch == 1] == [0, 1]
    assert sum(p.kind == "score" for p in p0.passes) == 2 * p0.num_micro_batches


def test_no_teacher_no_teacher_passes():
    shape = PassShape(has_teacher=False, teacher_distinct=False, sparse=False, prepass=False, score_contexts=0)
    p0, _ = _plans([RANK0, RANK1], shape)
    assert {p.kind for p in p0.passes} == {"student"} and not any(p0.teacher_at)


def test_the_teacher_context_does_not_size_the_student_micro_batch():
    # A 30-token teacher context on a 4 + 6 student row: two such rows fit a budget of 20 (2 x (4 + 6)).
    s = LearnerSample([1] * 4, [2] * 6, 1.0, teacher_prompt_ids=[3] * 30, distill_weight=1.0, distill_len=6)
    assert local_micro_batches([Row.of(s), Row.of(s)], 20) == [[0, 1]]


def test_logp_schedule_pads_with_empty_passes():
    sched = logp_schedule([[0, 1]], [1, 3], "ref")
    assert [idx for idx, _ in sched] == [(0, 1), (), ()]
    assert all(p.ops == (("forward", "ref"),) for _, p in sched)


@pytest.mark.parametrize("shape", [DENSE, TIP])
def test_every_pass_ends_its_micro_batch_with_one_optimizer_micro_step(shape):
    (p0,) = _plans([RANK0], shape)
    steps = [p.micro_batch for p in p0.passes for op in p.ops if op == ("step", "policy")]
    assert steps == list(range(p0.num_micro_batches))
