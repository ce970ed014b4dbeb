"""Where a toy-task completion first goes wrong (sposd.data.toy: "12+7=19. 19-15=4. \\boxed{4}").

The problem "Compute 12+7-15." fixes the chain of equations a correct solution writes. The first error is the
first equation that does not continue the chain (a wrong left operand, operator or right operand: a copy error, at
the equation's start) or whose result is wrong (at the result), else a final answer that differs from the gold
one (at the boxed value). A completion without an equation or a boxed answer has no located error.
"""

from __future__ import annotations

import re

_PROBLEM = re.compile(r"Compute\s+(\d+(?:\s*[+-]\s*\d+)+)\s*\.")
_TERM = re.compile(r"([+-]?)\s*(\d+)")
_EQUATION = re.compile(r"(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
_BOXED = re.compile(r"\\boxed\{\s*([^{}]*?)\s*\}")


def toy_chain(problem: str) -> list[tuple[int, str, int, int]] | None:
    """The equations (left, op, right, result) a correct solution of a toy problem writes, or None (not toy)."""
    m = _PROBLEM.search(problem)
    if m is None:
        return None
    terms = [(sign or "+", int(x)) for sign, x in _TERM.findall(m.group(1))]
    acc, out = terms[0][1], []
    for op, x in terms[1:]:
        new = acc + x if op == "+" else acc - x
        out.append((acc, op, x, new))
        acc = new
    return out


def first_error_char(text: str, problem: str, answer: str) -> int | None:
    """Character offset in `text` of its first arithmetic / copy / answer error, or None (no error found, not a
    toy problem, or nothing to check)."""
    chain = toy_chain(problem)
    if chain is None:
        return None
    for k, m in enumerate(_EQUATION.finditer(text)):
        left, op, right, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if k < len(chain) and (left, op, right) != chain[k][:3]:
            return m.start()
        if result != (left + right if op == "+" else left - right):
            return m.start(4)
    boxed = list(_BOXED.finditer(text))
    if boxed and boxed[-1].group(1) != str(answer).strip():
        return boxed[-1].start(1)
    return None


def char_to_token(pieces: list[str], char: int | None) -> int | None:
    """Index of the token whose text covers character `char` of "".join(pieces) (None stays None)."""
    if char is None:
        return None
    end = 0
    for i, p in enumerate(pieces):
        end += len(p)
        if char < end:
            return i
    return None
