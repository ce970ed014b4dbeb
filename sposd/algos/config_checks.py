"""The validators of the `algo` schemas: each raises a ValueError naming `algo.<key>` and what it accepts."""

from __future__ import annotations


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"algo.{key}={value!r} is not valid; choose from {list(choices)}")


def _at_least(field: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"algo.{field} must be >= {low}, got {value}")
