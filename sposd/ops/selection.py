"""Group-level selection for self-distillation: the prompt frontier weight and SSOPD's witness / wrong-completion rule.

Pure Python (no torch). Follows spec/ALGORITHMS.md section 14 (SSOPD): in a mixed group the teacher is conditioned on
the shortest correct completion (the witness) and the loss is applied to prefixes of the longest wrong completion,
weighted per prompt by a frontier weight of the group's pass rate.

Legend: G completions in one group.
"""

from __future__ import annotations

import math

PROMPT_WEIGHTS = ("none", "frontier", "indicator", "beta", "sqrt")
NUM_WRONG_MODES = ("one", "all")
PREFIX_MODES = ("all", "cap", "witness")


def prompt_weight(pass_rate: float, *, kind: str, a: float = 1.0, b: float = 1.0) -> float:
    """Prompt-level weight of an auxiliary loss as a function of the group's pass rate p.

    none -> 1; frontier -> 4 p (1 - p) (SSOPD project default, peak 1 at p = 0.5, zero for all-correct or all-wrong
    groups); indicator -> 1[0 < p < 1]; beta -> p^a (1 - p)^b (the Paced kernel); sqrt -> sqrt(p (1 - p)) (SC-SDPO).

    Args:
        pass_rate: p, the fraction of the group's completions that are correct, in [0, 1].
        kind: one of PROMPT_WEIGHTS.
        a: Beta-kernel exponent of p (kind="beta" only).
        b: Beta-kernel exponent of 1 - p (kind="beta" only).
    Returns: the weight (>= 0).
    """
    if kind not in PROMPT_WEIGHTS:
        raise ValueError(f"unknown prompt weight {kind!r}; choose from {PROMPT_WEIGHTS}")
    p = float(pass_rate)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pass_rate must be in [0, 1], got {pass_rate}")
    if kind == "none":
        return 1.0
    if kind == "frontier":
        return 4.0 * p * (1.0 - p)
    if kind == "indicator":
        return 1.0 if 0.0 < p < 1.0 else 0.0
    if kind == "beta":
        return p**a * (1.0 - p) ** b
    return math.sqrt(p * (1.0 - p))


def select_longest_wrong(
    lengths: list[int],
    correct: list[bool],
    truncated: list[bool],
    *,
    exclude_truncated: bool = False,
    num_wrong: str = "one",
) -> tuple[int, list[int]] | None:
    """SSOPD's rule on one group: the shortest correct completion is the witness, the longest wrong one is distilled.

    Witness = argmin length among correct completions; wrong = argmax length among eligible wrong completions (ties go
    to the lowest index in both), or every eligible wrong completion in index order with num_wrong="all". A wrong
    completion is eligible unless it is truncated and exclude_truncated is set. Lengths may be in any unit (tokens
    by default, characters as an option): they are only compared.

    Args:
        lengths: length of each of the G completions.
        correct: verifier outcome of each completion.
        truncated: whether each completion hit the generation budget.
        exclude_truncated: drop truncated wrong completions from the candidates.
        num_wrong: "one" (the literal rule) or "all" (extension: every eligible wrong completion).
    Returns: (witness_index, wrong_indices), or None when the group has no correct completion or no eligible wrong one.
    """
    if not len(lengths) == len(correct) == len(truncated):
        raise ValueError(
            f"lengths, correct and truncated must have equal lengths, got {len(lengths)}, {len(correct)}, "
            f"{len(truncated)}"
        )
    if num_wrong not in NUM_WRONG_MODES:
        raise ValueError(f"unknown num_wrong {num_wrong!r}; choose from {NUM_WRONG_MODES}")
    right = [i for i, c in enumerate(correct) if c]
    wrong = [i for i, c in enumerate(correct) if not c and not (exclude_truncated and truncated[i])]
    if not right or not wrong:
        return None
    # min/max return the first extremal element, and the candidates are in index order: ties -> lowest index.
    witness = min(right, key=lambda i: lengths[i])
    if num_wrong == "all":
        return witness, wrong
    return witness, [max(wrong, key=lambda i: lengths[i])]


def prefix_length(wrong_len: int, *, mode: str = "all", witness_len: int | None = None, cap: int | None = None) -> int:
    """How many leading positions of the wrong completion receive the distillation loss.

    all -> wrong_len; cap -> min(wrong_len, cap); witness -> min(wrong_len, witness_len) (the prefix up to the
    witness's stopping time, a literal stopping-time reading).

    Args:
        wrong_len: length of the wrong completion in tokens (>= 0).
        mode: one of PREFIX_MODES.
        witness_len: length of the witness in tokens (required for mode="witness", >= 0).
        cap: L_prefix (required for mode="cap", >= 1).
    Returns: the number of positions, in [0, wrong_len].
    """
    if wrong_len < 0:
        raise ValueError(f"wrong_len must be >= 0, got {wrong_len}")
    if mode == "all":
        return wrong_len
    if mode == "cap":
        if cap is None or cap < 1:
            raise ValueError(f"prefix mode 'cap' needs cap >= 1, got {cap}")
        return min(wrong_len, cap)
    if mode == "witness":
        if witness_len is None or witness_len < 0:
            raise ValueError(f"prefix mode 'witness' needs witness_len >= 0, got {witness_len}")
        return min(wrong_len, witness_len)
    raise ValueError(f"unknown prefix mode {mode!r}; choose from {PREFIX_MODES}")


def select_longest_minority(
    lengths: list[int], classes: list[int | None], *, num_wrong: str = "one"
) -> tuple[int, list[int]] | None:
    """U-OPSD's rule on one group (spec section 14 box): the majority answer replaces the verified one.

    The majority class is the answer class with the most members, if that count is unique and at least 2 (a tie or
    a group of single votes has no majority). Witness = the shortest completion of the majority class; distilled =
    the longest completion outside it (no answer counts as disagreeing), or all of them with num_wrong="all".
    Ties go to the lowest index.

    Args:
        lengths: length of each completion (any unit; only compared).
        classes: answer class of each completion (`Completion.answer_class`), None for no answer.
        num_wrong: "one" or "all".
    Returns: (witness_index, minority_indices), or None when the group has no majority or is unanimous.
    """
    if len(lengths) != len(classes):
        raise ValueError(f"lengths and classes must have equal lengths, got {len(lengths)} and {len(classes)}")
    if num_wrong not in NUM_WRONG_MODES:
        raise ValueError(f"unknown num_wrong {num_wrong!r}; choose from {NUM_WRONG_MODES}")
    counts: dict[int, int] = {}
    for c in classes:
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    if not ranked or ranked[0] < 2 or (len(ranked) > 1 and ranked[1] == ranked[0]):
        return None
    top = next(c for c, n in counts.items() if n == ranked[0])
    majority = [i for i, c in enumerate(classes) if c == top]
    minority = [i for i, c in enumerate(classes) if c != top]
    if not minority:
        return None
    witness = min(majority, key=lambda i: lengths[i])
    return (witness, minority) if num_wrong == "all" else (witness, [max(minority, key=lambda i: lengths[i])])
