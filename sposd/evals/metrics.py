"""Benchmark metrics from graded samples: Avg@k, unbiased pass@k', maj@k, lengths, truncation (spec 0.7).

Pure functions on plain Python values (no torch, no I/O). A problem's outcome is its n graded samples;
a benchmark's summary is the `results.json` block documented in the README.

    avg@k   = mean over problems of c/n                        (c correct samples of n)
    pass@k' = mean over problems of 1 - C(n-c, k') / C(n, k')  (Chen et al. 2021's unbiased estimator)
    maj@k   = mean over problems of [the most frequent answer is correct]

maj@k groups answers in two steps. Every sample graded correct is equivalent to the gold answer under
math-verify, so all correct samples form one class (whatever their notation). Wrong answers are grouped by
`normalize_answer` (a string key), because math-verify is not run between two wrong answers. Samples with
no extracted answer do not vote. The largest class wins; a tie goes to the class whose first sample comes
first in sample order (the order vLLM returned them, i.e. a random tie-break). With no vote, maj = 0.
Because two wrong answers in different notations (`1/3`, `\\frac{1}{3}`) count as different classes, maj@k
can be higher than with a full equivalence grouping when the wrong answers disagree only in notation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

CORRECT_CLASS = "<correct>"
_WS = re.compile(r"\s+")
_SPACING = re.compile(r"\\[,;:! ]|\\left|\\right")


@dataclass
class ProblemOutcome:
    """The graded samples of one problem.

    Attributes:
        id: the problem id.
        correct: per sample, the verifier's verdict.
        extracted: per sample, the extracted final answer (None: nothing extractable).
        num_tokens: per sample, completion length in tokens (None: unknown, e.g. re-graded text only).
        truncated: per sample, whether it hit the token budget (None: unknown).
    """

    id: str
    correct: list[bool]
    extracted: list[str | None]
    num_tokens: list[int | None]
    truncated: list[bool | None]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: the chance that k of its n samples, drawn without replacement, hold a
    correct one: 1 - C(n-c, k) / C(n, k).

    Args:
        n: samples drawn; c: how many are correct (0 <= c <= n); k: 1 <= k <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(k: int) -> list[int]:
    """The k' reported as pass@k': every power of two <= k, and k itself (k=12 -> [1, 2, 4, 8, 12])."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = [1 << i for i in range(k.bit_length()) if 1 << i <= k]
    return out if out[-1] == k else [*out, k]


def normalize_answer(answer: str) -> str:
    """String key of a wrong answer for majority voting: no whitespace, `$`, `\\left`/`\\right` or LaTeX
    spacing commands; `\\dfrac`/`\\tfrac` -> `\\frac`; no trailing period."""
    s = _SPACING.sub("", answer.replace("$", ""))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _WS.sub("", s).rstrip(".")


def majority_correct(correct: Sequence[bool], extracted: Sequence[str | None]) -> bool:
    """Whether the majority answer of one problem's samples is correct (grouping and ties: module docstring)."""
    votes: dict[str, int] = {}  # insertion order = first occurrence, which breaks ties
    for ok, answer in zip(correct, extracted, strict=True):
        if answer is None:
            continue
        key = CORRECT_CLASS if ok else normalize_answer(answer)
        votes[key] = votes.get(key, 0) + 1
    if not votes:
        return False
    return max(votes, key=votes.__getitem__) == CORRECT_CLASS  # max keeps the first of equal counts


def summarize(problems: Sequence[ProblemOutcome]) -> dict:
    """The metrics block of one benchmark in results.json.

    k is the number of samples per problem (the smallest, if problems differ; avg@k and maj@k then use each
    problem's own samples). Length and truncation statistics are None when any sample lacks them.
    """
    if not problems:
        raise ValueError("no problems to summarize")
    ns = [len(p.correct) for p in problems]
    if min(ns) < 1:
        raise ValueError(f"problem {problems[ns.index(min(ns))].id!r} has no samples")
    k = min(ns)
    cs = [sum(p.correct) for p in problems]
    tokens = [t for p in problems for t in p.num_tokens]
    trunc = [t for p in problems for t in p.truncated]
    extracted = [a for p in problems for a in p.extracted]
    out = {
        "k": k,
        "num_problems": len(problems),
        "num_samples": sum(ns),
        "avg@k": _mean([c / n for c, n in zip(cs, ns, strict=True)]),
        "pass@k": {str(kk): _mean([pass_at_k(n, c, kk) for c, n in zip(cs, ns, strict=True)]) for kk in pass_ks(k)},
        "maj@k": _mean([float(majority_correct(p.correct, p.extracted)) for p in problems]),
        "mean_response_tokens": None if None in tokens else _mean(tokens),
        "max_response_tokens": None if None in tokens else max(tokens),
        "truncation_rate": None if None in trunc else _mean([float(t) for t in trunc]),
        "no_answer_rate": _mean([float(a is None) for a in extracted]),
        "per_problem": [{"id": p.id, "correct": c, "samples": n} for p, c, n in zip(problems, cs, ns, strict=True)],
    }
    if len(set(ns)) > 1:
        out["samples_per_problem"] = {"min": min(ns), "max": max(ns)}
    return out


def macro(per_benchmark: dict[str, dict]) -> dict:
    """Unweighted means over benchmarks of avg@k, maj@k and every pass@k' that all benchmarks report."""
    if not per_benchmark:
        raise ValueError("no benchmarks to average")
    blocks = list(per_benchmark.values())
    shared = set.intersection(*(set(b["pass@k"]) for b in blocks))
    return {
        "benchmarks": list(per_benchmark),
        "avg@k": _mean([b["avg@k"] for b in blocks]),
        "maj@k": _mean([b["maj@k"] for b in blocks]),
        "pass@k": {kk: _mean([b["pass@k"][kk] for b in blocks]) for kk in sorted(shared, key=int)},
    }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)
