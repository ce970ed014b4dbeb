"""Answer classes for majority voting (U-OPSD): which completions of a group give equivalent final answers.

The verifier decides equivalence (math-verify, as for rewards): each pair of extracted answers of a group is graded
once, "\\boxed{a_i}" against the gold a_j, and the classes are the connected components of the equivalent pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sposd.text import extract_answer
from sposd.types import RolloutGroup

GradePairs = Callable[[Sequence[tuple[str, str]]], list[bool]]


def answer_classes(answers: list[str | None], equivalent: list[tuple[int, int, bool]]) -> list[int | None]:
    """Connected components of the equivalence pairs: class ids 0, 1, ... in order of first member; None stays None.

    Args:
        answers: the extracted answer of each completion (None: no answer).
        equivalent: (i, j, same) for pairs of completions that both have an answer.
    """
    parent = list(range(len(answers)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, same in equivalent:
        if same:
            parent[root(j)] = root(i)
    ids: dict[int, int] = {}
    out: list[int | None] = []
    for i, a in enumerate(answers):
        out.append(None if a is None else ids.setdefault(root(i), len(ids)))
    return out


def label_answer_classes(groups: list[RolloutGroup], grade_pairs: GradePairs) -> None:
    """Set `Completion.answer_class` of every completion (one batched verifier call for all groups).

    Args:
        groups: the step's groups.
        grade_pairs: (completion text, gold answer) pairs -> verdicts (`VerifierPool.grade`).
    """

    per_group = [[extract_answer(c.text) for c in g.completions] for g in groups]
    pairs, where = [], []
    for gi, answers in enumerate(per_group):
        have = [i for i, a in enumerate(answers) if a is not None]
        for x, i in enumerate(have):
            for j in have[x + 1 :]:
                same_text = answers[i].strip() == answers[j].strip()
                where.append((gi, i, j, same_text))
                if not same_text:
                    pairs.append((f"\\boxed{{{answers[i]}}}", answers[j]))
    verdicts = iter(grade_pairs(pairs) if pairs else [])
    links: list[list[tuple[int, int, bool]]] = [[] for _ in groups]
    for gi, i, j, same_text in where:
        links[gi].append((i, j, True if same_text else bool(next(verdicts))))
    for g, answers, eq in zip(groups, per_group, links, strict=True):
        for c, cls in zip(g.completions, answer_classes(answers, eq), strict=True):
            c.answer_class = cls
