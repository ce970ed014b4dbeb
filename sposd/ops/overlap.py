"""Rollout-reference overlap and PAINT's reveal ratio (how much of the reference solution the teacher sees).

Pure Python (no torch). Follows spec/ALGORITHMS.md section 15 (PAINT, component 1, and its 2026-12 box): the overlap
o in [0, 1] is the fraction of the reference covered by the rollout: by default the recall of the reference's
anchors (its last boxed answer, its formulas, its numbers), or a token-level recall (ROUGE-L, unigram, bigram); the
reveal ratio is rho = clip(rho_min + (1 - rho_min) * x, rho_min, 1) with x = 1 - o (reveal more to a rollout far
from the reference, the default) or x = o, and the teacher keeps the first ceil(rho * n) reference units.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence

OVERLAP_METRICS = ("lcs_recall", "unigram_recall", "bigram_recall")  # on token ids; anchor_recall is on text
REVEAL_DIRECTIONS = ("more_when_close", "more_when_far")


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of a and b, bit-parallel (Allison-Dix / Hyyro).

    Bit j of the match mask M[x] is set where b[j] == x. V starts as all ones over len(b) bits; for each element x
    of a: U = V & M[x], V = (V + U) | (V - U), masked to len(b) bits. The LCS is the number of zero bits of V.
    With Python ints this costs O(len(a) * len(b) / wordsize); the loop runs over the shorter sequence.

    Args:
        a: first sequence (e.g. token ids).
        b: second sequence.
    Returns: the LCS length, in [0, min(len(a), len(b))].
    """
    if len(a) > len(b):  # LCS is symmetric: loop over the shorter one, use the longer one as the bit vector
        a, b = b, a
    n = len(b)
    if len(a) == 0:
        return 0
    match: dict[Hashable, int] = {}
    for j, x in enumerate(b):
        match[x] = match.get(x, 0) | (1 << j)
    full = (1 << n) - 1
    v = full
    for x in a:
        m = match.get(x)
        if m is None:  # U = 0 leaves V unchanged
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


_FORMULA = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
_SIZING = re.compile(r"\\(?:left|right|displaystyle|!|,|;|:)")


def _norm_text(text: str) -> str:
    """Formula / answer normal form: sizing commands and thin spaces dropped, then every whitespace."""
    return _SPACE.sub("", _SIZING.sub("", text))


def _norm_number(num: str) -> str:
    """1,000 -> 1000; 2.50 -> 2.5; 3.0 -> 3."""
    num = num.replace(",", "")
    return num.rstrip("0").rstrip(".") if "." in num else num


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (brace-matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def reference_anchors(reference: str) -> tuple[set[str], set[str]]:
    """The anchors of a reference solution: (textual anchors, numbers), each normalised.

    Textual: the last \\boxed{} content and every $...$, $$...$$, \\(...\\), \\[...\\] formula (whitespace and
    sizing commands removed); numbers: every number in the text (thousands separators and trailing decimal zeros
    removed). Empty anchors are dropped.
    """
    texts = {_norm_text(next(g for g in m.groups() if g is not None)) for m in _FORMULA.finditer(reference)}
    boxed = _last_boxed(reference)
    if boxed is not None:
        texts.add(_norm_text(boxed))
    return {t for t in texts if t}, {_norm_number(n) for n in _NUMBER.findall(reference)}


def anchor_recall(rollout: str, reference: str) -> float:
    """PAINT's overlap (spec section 15 box): the fraction of the reference's anchors that occur in the rollout.

    A textual anchor occurs when its normal form is a substring of the rollout's (whitespace removed); a number
    when the rollout contains the same number (as a whole number, not a digit run inside a longer one). A reference
    without anchors gives 1.0 (nothing to recall).

    Args:
        rollout: the student's completion text.
        reference: the reference solution text.
    Returns: o in [0, 1].
    """
    texts, numbers = reference_anchors(reference)
    if not texts and not numbers:
        return 1.0
    flat = _norm_text(rollout)
    found = sum(t in flat for t in texts)
    rollout_numbers = {_norm_number(n) for n in _NUMBER.findall(rollout)}
    found += len(numbers & rollout_numbers)
    return found / (len(texts) + len(numbers))


def _ngram_recall(rollout: Sequence, reference: Sequence, n: int) -> float:
    """Clipped multiset n-gram matches divided by the number of reference n-grams (1.0 if the reference has none)."""
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    if not ref:
        return 1.0
    hyp = Counter(tuple(rollout[i : i + n]) for i in range(len(rollout) - n + 1))
    matched = sum(min(c, hyp[g]) for g, c in ref.items())
    return matched / sum(ref.values())


def overlap(rollout: Sequence, reference: Sequence, *, metric: str = "lcs_recall") -> float:
    """Fraction of the reference covered by the rollout, in [0, 1].

    lcs_recall = LCS(rollout, reference) / len(reference) (ROUGE-L recall); unigram_recall / bigram_recall = clipped
    multiset n-gram matches / number of reference n-grams. A reference that is empty (or has fewer than n tokens)
    gives 1.0: nothing to reveal is trivially covered.

    Args:
        rollout: the student's completion (e.g. token ids).
        reference: the reference solution, in the same units.
        metric: one of OVERLAP_METRICS.
    Returns: o in [0, 1].
    """
    if metric == "lcs_recall":
        return lcs_length(rollout, reference) / len(reference) if len(reference) else 1.0
    if metric == "unigram_recall":
        return _ngram_recall(rollout, reference, 1)
    if metric == "bigram_recall":
        return _ngram_recall(rollout, reference, 2)
    raise ValueError(f"unknown overlap metric {metric!r}; choose from {OVERLAP_METRICS}")


def reveal_ratio(o: float, *, rho_min: float = 0.25, direction: str = "more_when_far") -> float:
    """PAINT's reveal ratio: rho = clip(rho_min + (1 - rho_min) * x, rho_min, 1).

    "more_when_far" (default; the paper's "when the student is poorly aligned, the teacher should reveal more",
    spec section 15 box) uses x = 1 - o; "more_when_close" uses x = o (the earlier project default).

    Args:
        o: overlap in [0, 1] (see `overlap`).
        rho_min: the fraction revealed at the least-revealing end, in [0, 1].
        direction: one of REVEAL_DIRECTIONS.
    Returns: rho in [rho_min, 1].
    """
    if not 0.0 <= rho_min <= 1.0:
        raise ValueError(f"rho_min must be in [0, 1], got {rho_min}")
    if direction == "more_when_close":
        x = o
    elif direction == "more_when_far":
        x = 1.0 - o
    else:
        raise ValueError(f"unknown reveal direction {direction!r}; choose from {REVEAL_DIRECTIONS}")
    return min(max(rho_min + (1.0 - rho_min) * x, rho_min), 1.0)


def reveal_count(n: int, rho: float, *, eps: float = 1e-9) -> int:
    """Number of leading reference units to keep: ceil(rho * n), clipped to [0, n].

    Args:
        n: number of units (tokens or lines) of the reference.
        rho: reveal ratio.
        eps: subtracted before the ceiling so float error (0.3 * 10 = 3.0000000000000004) does not round up.
    Returns: k in [0, n].
    """
    return min(max(math.ceil(rho * n - eps), 0), n)
