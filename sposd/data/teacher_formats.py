"""The warm start's user messages: the student's, and every teacher message the self-distillation family uses.

A self-distillation teacher is the policy itself reading a privileged message; a tiny model that never saw that
message produces noise under it (README: SDPO, SD-Zero and OPSDC collapsed on the toy when the warm start showed
OPSD's message only). So the warm start mixes in every teacher format, built by the same functions the teacher
contexts render with (`sposd.data.templates`), and always trains the same reply: the problem's own-style worked
solution. The model thus learns to read each message, and a reference in the foreign style (`data.solution_style`)
as a stronger model's solution would be read, while still writing its own style.

Formats (`TEACHER_FORMATS`, shares of the privileged examples; `privileged_frac` of all examples are privileged):

    opsd         OPSD's message (wrapper "opsd") around a reference: OPSD, SSOPD's / U-OPSD's witness, PAINT's partner
    opsd_partial the same around a reference cut to its first rho ~ U[0.25, 1] tokens (PAINT, ATESD)
    sdpo         SDPO_TEMPLATE (wrapper "sdpo")
    sdpo_exact   SDPO's reprompt (wrapper "sdpo_exact", SDPO's default)
    reviser      SD-Zero's reviser prompt around an own-style attempt, right or with one misread operand (half each),
                 and its verdict
    concise      OPSDC's concise instruction around the problem (no privileged text)

A reference-bearing format (opsd, opsd_partial, sdpo, sdpo_exact) shows the reference in the foreign style with
probability `FOREIGN_FRAC`, else in the own style (a witness is an own-style completion).
"""

from __future__ import annotations

import random

from sposd.data.templates import (
    build_concise_message,
    build_reviser_message,
    build_teacher_message,
    build_user_message,
    truncate_reference,
)
from sposd.data.toy import parse_problem, worked_solution

TEACHER_FORMATS: dict[str, float] = {
    "opsd": 0.30,
    "opsd_partial": 0.10,
    "sdpo": 0.10,
    "sdpo_exact": 0.15,
    "reviser": 0.20,
    "concise": 0.15,
}
FOREIGN_FRAC = 0.5
REFERENCE_FORMATS = ("opsd", "opsd_partial", "sdpo", "sdpo_exact")
PARTIAL_RHO_MIN = 0.25


def pick_format(rng: random.Random, privileged_frac: float) -> str:
    """"student" with probability 1 - privileged_frac, else a teacher format drawn by its TEACHER_FORMATS share."""
    if rng.random() >= privileged_frac:
        return "student"
    names = list(TEACHER_FORMATS)
    return rng.choices(names, weights=[TEACHER_FORMATS[n] for n in names])[0]


def wrong_attempt(record: dict, rng: random.Random) -> str:
    """An own-style worked solution of the record's problem with one operand misread (changed by 1..3): consistent
    arithmetic, wrong final answer. Example: "Compute 12+7-15." -> "12+8=20. 20-15=5. \\boxed{5}"."""
    operands, ops = parse_problem(record["problem"])
    changed = list(operands)
    changed[rng.randrange(len(operands))] += rng.choice([-3, -2, -1, 1, 2, 3])
    return worked_solution(changed, ops, style="own")


def teacher_message(
    record: dict, fmt: str, rng: random.Random, *, instruction: str, tokenizer=None, style: str | None = None,
    verdict: bool | None = None,
) -> str:
    """The user message of one warm-start example of format `fmt` ("student" or a TEACHER_FORMATS key).

    Args:
        record: a toy record (own-style `solution`).
        fmt: the format.
        rng: draws the reference style, the cut and the attempt's verdict.
        instruction: the student's instruction (the teacher messages end with it too, except reviser / concise).
        tokenizer: needed by "opsd_partial" (the cut counts tokens).
        style: the reference's style ("own" / "foreign"); None draws it (FOREIGN_FRAC).
        verdict: the reviser attempt's verdict; None draws it (half each).
    """
    problem = record["problem"]
    if fmt == "student":
        return build_user_message(problem, instruction=instruction)
    if fmt in REFERENCE_FORMATS:
        if style is None:
            style = "foreign" if rng.random() < FOREIGN_FRAC else "own"
        reference = worked_solution(*parse_problem(problem), style=style)
        if fmt == "opsd_partial":
            rho = rng.uniform(PARTIAL_RHO_MIN, 1.0)
            reference = truncate_reference(tokenizer, reference, rho, unit="tokens")
        wrapper = "opsd" if fmt == "opsd_partial" else fmt
        return build_teacher_message(problem, reference, wrapper=wrapper, instruction=instruction)
    if fmt == "reviser":
        correct = rng.random() < 0.5 if verdict is None else verdict
        attempt = record["solution"] if correct else wrong_attempt(record, rng)
        return build_reviser_message(problem, attempt, correct=correct)
    if fmt == "concise":
        return build_concise_message(problem)
    raise ValueError(f"unknown warm-start format {fmt!r}; choose from {['student', *TEACHER_FORMATS]}")
