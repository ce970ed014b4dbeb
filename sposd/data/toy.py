"""The toy task of the embedded default: chained integer + / - with a worked solution (notes/TOY_TASK.md).

    problem  "Compute 12+7-15."
    solution "12+7=19. 19-15=4. \\boxed{4}"
    answer   "4"

Operands are drawn uniformly from 0..max_operand, the number of terms uniformly from min_terms..max_terms,
each operator from {+, -}.

Solution styles (`data.solution_style`, what the `solution` field of a training record holds):
    own      the worked solution above, in the format the warm start trains the model to write
    foreign  a correct worked solution in another notation, results first: "19 = 12 + 7; 4 = 19 - 15; answer 4"
             (a stronger model's solutions in another style; the warm start shows them as privileged context only)
    none     no solution (answer-only data, as DAPO-Math-17k): only methods that need no reference can run

The train / held-out split is a hash of the problem text alone, so the two
splits never share a problem whatever the seed or the number of records asked for; the seed only picks
which problems (and in which order) a call returns.
"""

from __future__ import annotations

import hashlib
import random
import re

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10
_PROBLEM = re.compile(r"Compute (\d+(?:[+-]\d+)+)\.")
SOLUTION_STYLES = ("own", "foreign", "none")
# Distinct problems run out unevenly: with the default knobs only ~720 train (~80 held-out) problems have two terms
# against ~29,000 with three, so a long list of distinct problems is mostly three-term ones (10,000 records: 7%
# two-term), while the 200-problem held-out set is ~34% two-term. 1,500 records keep the training set at ~36%
# (seeds 0 / 1: 36.4% / 35.7%; 1,000: 43% / 40%; 2,000: 32% / 31%), the held-out set's mix; RL repeats them.
DEFAULT_RECORDS = 1500


def make_problem(operands: list[int], ops: list[str]) -> dict:
    """Return the record of one chained problem: `operands[0] ops[0] operands[1] ...` evaluated left to right.

    Args:
        operands: k >= 2 non-negative integers.
        ops: k - 1 operators, each "+" or "-".
    """
    if len(operands) < 2 or len(ops) != len(operands) - 1 or any(o not in "+-" for o in ops):
        raise ValueError(f"need k >= 2 operands and k-1 operators in '+-', got {operands}, {ops}")
    expr = str(operands[0]) + "".join(f"{o}{x}" for o, x in zip(ops, operands[1:], strict=True))
    problem = f"Compute {expr}."
    return {
        "id": "toy-" + _digest(problem)[:12],
        "problem": problem,
        "answer": str(_partial_results(operands, ops)[-1]),
        "solution": worked_solution(operands, ops, style="own"),
    }


def _partial_results(operands: list[int], ops: list[str]) -> list[int]:
    """The running value after each operation, left to right."""
    acc, out = operands[0], []
    for o, x in zip(ops, operands[1:], strict=True):
        acc = acc + x if o == "+" else acc - x
        out.append(acc)
    return out


def worked_solution(operands: list[int], ops: list[str], *, style: str = "own") -> str:
    """A correct worked solution of `operands[0] ops[0] operands[1] ...` in one style.

    own:     "12+7=19. 19-15=4. \\boxed{4}"
    foreign: "19 = 12 + 7; 4 = 19 - 15; answer 4" (results first, spaced operators, no box)
    """
    results = _partial_results(operands, ops)
    lefts = [operands[0], *results[:-1]]
    if style == "own":
        steps = [f"{a}{o}{x}={r}." for a, o, x, r in zip(lefts, ops, operands[1:], results, strict=True)]
        return " ".join(steps) + f" \\boxed{{{results[-1]}}}"
    if style == "foreign":
        steps = [f"{r} = {a} {o} {x}" for a, o, x, r in zip(lefts, ops, operands[1:], results, strict=True)]
        return "; ".join(steps) + f"; answer {results[-1]}"
    raise ValueError(f"toy: solution style {style!r} has no worked solution; choose from ['own', 'foreign']")


def slipped_solution(operands: list[int], ops: list[str], rng: random.Random) -> str:
    """An own-style worked solution with one arithmetic slip: one step's result off by 1 or 2 (either sign), the
    later steps computed correctly from the wrong value, so the final answer is wrong. Example: "Compute 12+7-15."
    -> "12+7=20. 20-15=5. \\boxed{5}". The warm start imitates such noisy demonstrations (`slip_frac`).
    """
    results = _partial_results(operands, ops)
    at = rng.randrange(len(results))
    acc = results[at] + rng.choice([-2, -1, 1, 2])
    lefts = [operands[0], *results[:-1]]
    steps = [f"{a}{o}{x}={r}." for a, o, x, r in zip(lefts[:at], ops[:at], operands[1:at + 1], results[:at],
                                                       strict=True)]
    steps.append(f"{lefts[at]}{ops[at]}{operands[at + 1]}={acc}.")
    for o, x in zip(ops[at + 1:], operands[at + 2:], strict=True):
        new = acc + x if o == "+" else acc - x
        steps.append(f"{acc}{o}{x}={new}.")
        acc = new
    return " ".join(steps) + f" \\boxed{{{acc}}}"


def parse_problem(problem: str) -> tuple[list[int], list[str]]:
    """(operands, operators) of a toy problem text "Compute 12+7-15." (the inverse of make_problem)."""
    m = _PROBLEM.fullmatch(problem)
    if not m:
        raise ValueError(f"toy: {problem!r} is not a toy problem ('Compute a+b-c.')")
    tokens = re.findall(r"\d+|[+-]", m.group(1))
    return [int(t) for t in tokens[0::2]], tokens[1::2]


def with_solution_style(record: dict, style: str) -> dict:
    """The record with its `solution` in `style` ("own" unchanged, "foreign" re-written, "none" None)."""
    if style not in SOLUTION_STYLES:
        raise ValueError(f"data.solution_style={style!r} is not valid; choose from {list(SOLUTION_STYLES)}")
    if style == "own":
        return record
    solution = None if style == "none" else worked_solution(*parse_problem(record["problem"]), style=style)
    return dict(record, solution=solution)


def split_of(problem: str) -> str:
    """'heldout' for about HELDOUT_PERCENT % of problems (by a hash of the text), else 'train'."""
    return "heldout" if int(_digest(problem)[:8], 16) % 100 < HELDOUT_PERCENT else "train"


def sample_problem(rng: random.Random, *, max_operand: int = 19, min_terms: int = 2, max_terms: int = 3) -> dict:
    """Draw one problem (either split) with the given random generator."""
    k = rng.randint(min_terms, max_terms)
    return make_problem([rng.randint(0, max_operand) for _ in range(k)], [rng.choice("+-") for _ in range(k - 1)])


def space_size(*, max_operand: int = 19, min_terms: int = 2, max_terms: int = 3) -> int:
    """How many distinct problems the knobs allow (both splits together)."""
    n = max_operand + 1
    return sum(n**k * 2 ** (k - 1) for k in range(min_terms, max_terms + 1))


def toy_records(
    n: int | None = None,
    *,
    seed: int = 0,
    split: str = "train",
    max_operand: int = 19,
    min_terms: int = 2,
    max_terms: int = 3,
    solution_style: str = "own",
) -> list[dict]:
    """Return n distinct toy problems of one split, deterministic in (seed, split, knobs).

    A shorter call returns a prefix of a longer one. Records have the schema of every data source:
    `id`, `problem`, `answer`, `solution`.

    Args:
        n: how many records; None means min(DEFAULT_RECORDS, about the split's size / 2).
        seed: picks the problems and their order.
        split: "train" or "heldout" (disjoint, ~90% / ~10% of all problems).
        max_operand, min_terms, max_terms: difficulty knobs (operands 0..max_operand, terms per problem).
        solution_style: "own" | "foreign" | "none" (SOLUTION_STYLES): what the `solution` field holds. The
            problems drawn do not depend on it.
    """
    check_knobs(max_operand=max_operand, min_terms=min_terms, max_terms=max_terms)
    if solution_style not in SOLUTION_STYLES:
        raise ValueError(f"data.solution_style={solution_style!r} is not valid; choose from {list(SOLUTION_STYLES)}")
    if split not in SPLITS:
        raise ValueError(f"toy split {split!r} is not valid; choose from {list(SPLITS)}")
    frac = HELDOUT_PERCENT / 100 if split == "heldout" else 1 - HELDOUT_PERCENT / 100
    approx_size = int(space_size(max_operand=max_operand, min_terms=min_terms, max_terms=max_terms) * frac)
    if n is None:
        n = min(DEFAULT_RECORDS, approx_size // 2)
    if n < 0:
        raise ValueError(f"toy: n must be >= 0, got {n}")
    # Rejection sampling of distinct problems: fine while n is well below the split's size.
    if n > approx_size // 2:
        raise ValueError(
            f"toy: asked for {n} distinct {split} problems but the knobs (max_operand={max_operand}, "
            f"terms {min_terms}-{max_terms}) allow only about {approx_size}; ask for at most {approx_size // 2}"
        )
    rng = random.Random(f"toy-{seed}-{split}")
    seen: set[str] = set()
    out: list[dict] = []
    for _ in range(50 * n + 10_000):
        if len(out) == n:
            break
        rec = sample_problem(rng, max_operand=max_operand, min_terms=min_terms, max_terms=max_terms)
        if rec["problem"] in seen or split_of(rec["problem"]) != split:
            continue
        seen.add(rec["problem"])
        out.append(with_solution_style(rec, solution_style))
    else:
        if len(out) < n:
            raise ValueError(f"toy: found only {len(out)} distinct {split} problems of the {n} asked for; "
                             "ask for fewer")
    return out


def check_knobs(*, max_operand: int, min_terms: int, max_terms: int) -> None:
    """Raise ValueError naming the bad knob."""
    if max_operand < 1:
        raise ValueError(f"toy: max_operand must be >= 1, got {max_operand}")
    if not 2 <= min_terms <= max_terms:
        raise ValueError(f"toy: need 2 <= min_terms <= max_terms, got min_terms={min_terms}, max_terms={max_terms}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
