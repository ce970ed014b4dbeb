"""U-OPSD's majority rule on crafted groups: answer classes, the witness and the dissenting completion."""

from __future__ import annotations

import pytest

from sposd.algos.config import DistillCfg
from sposd.algos.distill import distill_requests
from sposd.algos.majority import answer_classes, label_answer_classes
from sposd.ops.repetition import ends_in_loop
from sposd.ops.selection import select_longest_minority
from sposd.types import Completion, Prompt, RolloutGroup

UOPSD = dict(coef=1.0, context="shortest_majority", select="longest_minority", normalize="token_mean")


def test_answer_classes_are_connected_components():
    # 0~2 and 2~3 -> {0, 2, 3}; 1 alone; 4 has no answer
    classes = answer_classes(["a", "b", "a'", "a''", None], [(0, 2, True), (2, 3, True), (0, 1, False)])
    assert classes == [0, 1, 0, 0, None]


@pytest.mark.parametrize(
    "classes,lengths,expected",
    [
        # majority {0, 2, 3} (class 0); witness = shortest of them (#2, length 3); dissenters #1 (len 9), #4 (len 7)
        ([0, 1, 0, 0, None], [5, 9, 3, 4, 7], (2, [1])),
        # a tie 2-2: no majority
        ([0, 0, 1, 1], [1, 2, 3, 4], None),
        # unanimous: no dissenter
        ([0, 0, 0], [1, 2, 3], None),
        # single votes only: no majority
        ([0, 1, None], [1, 2, 3], None),
        # equal lengths: lowest index for both the witness and the dissenter
        ([1, 0, 1, 0, 1], [4, 4, 4, 4, 4], (0, [1])),
    ],
)
def test_select_longest_minority(classes, lengths, expected):
    assert select_longest_minority(lengths, classes) == expected


def test_select_all_minority():
    assert select_longest_minority([5, 9, 3, 4, 7], [0, 1, 0, 0, None], num_wrong="all") == (2, [1, 4])


def _group(texts, *, answer=""):
    p = Prompt(id="p", problem="Q", prompt_ids=[1], answer=answer)
    return RolloutGroup(p, [Completion(token_ids=list(range(len(t))), text=t) for t in texts])


def test_label_answer_classes_uses_the_grader_for_unequal_strings():
    g = _group([r"\boxed{1/2}", r"\boxed{0.5}", r"\boxed{3}", "no answer", r"so \boxed{1/2}"])
    seen = []

    def grade(pairs):  # a stand-in for math-verify: 1/2 == 0.5
        seen.extend(pairs)
        return [{a.strip("\\boxed{}"), b} == {"1/2", "0.5"} for a, b in pairs]

    label_answer_classes([g], grade)
    assert [c.answer_class for c in g.completions] == [0, 0, 1, None, 0]
    assert (r"\boxed{1/2}", "1/2") not in seen  # identical strings are not sent to the grader


def test_uopsd_requests_need_no_gold_answer():
    # answer-free data: every completion is "wrong" for the verifier, the majority decides alone
    texts = ["A" * 6, "B" * 9, "A" * 3, "A" * 4, "C" * 2]
    g = _group(texts)
    for c, cls in zip(g.completions, [0, 1, 0, 0, 2], strict=True):
        c.answer_class = cls
    reqs, stats = distill_requests([g], DistillCfg(**UOPSD))
    # witness = #2 ("AAA", the shortest majority completion); distilled = #1 (longest dissenter, 9 tokens)
    assert [r is not None for r in reqs] == [False, True, False, False, False]
    assert reqs[1].context.text == "AAA" and reqs[1].num_positions == 9
    assert stats["distill/targets"] == 1 and stats["distill/completions"] == 5
    unanimous = _group(["A", "A"])
    for c in unanimous.completions:
        c.answer_class = 0
    assert distill_requests([unanimous], DistillCfg(**UOPSD))[0] == [None, None]


def test_ends_in_loop():
    assert ends_in_loop([1, 2, 3] + [7, 8] * 8)  # period 2, 8 copies = 16 tokens
    assert not ends_in_loop([1, 2, 3] + [7, 8] * 7)  # 14 tokens < min_span 16
    assert not ends_in_loop(list(range(40)))
    assert ends_in_loop([5] * 16) and not ends_in_loop([5] * 15)
    assert ends_in_loop([9, 9] + [1, 2, 3, 4] * 4)  # period 4, 4 copies


def test_majority_context_with_another_selection():
    # context shortest_majority with select all: the majority's shortest (#2) teaches every other completion
    g = _group(["A" * 6, "B" * 9, "A" * 3, "A" * 4])
    for c, cls in zip(g.completions, [0, 1, 0, 0], strict=True):
        c.answer_class = cls
    reqs, _ = distill_requests([g], DistillCfg(**{**UOPSD, "select": "all"}))
    assert [r is not None for r in reqs] == [True, True, False, True]
    assert {r.context.text for r in reqs if r is not None} == {"AAA"}
