"""The small validators every config schema uses: each raises a ValueError naming the bad key and the valid
values (a dataclass's `__post_init__` calls them, so they run at `OmegaConf.to_object`)."""

from __future__ import annotations

from typing import Any


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose from {list(choices)}")


def _check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    """low <= value <= high (both ends included)."""
    if not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {value}")


def check_sampling(
    prefix: str, *, temperature: float, top_p: float, top_k: int, min_p: float = 0.0, allow_greedy: bool = False
) -> None:
    """The one validator of vLLM sampling settings (training rollouts and evaluations share it).

    Args:
        prefix: the config key holding them ("rollout", "eval"), named in the message.
        allow_greedy: temperature 0 (greedy) is valid; training rollouts need > 0 (the loss divides by it).
    """
    _check_positive(f"{prefix}.temperature", temperature, allow_zero=allow_greedy)
    if not 0 < top_p <= 1:
        raise ValueError(f"{prefix}.top_p must be in (0, 1], got {top_p}")
    if top_k == 0 or top_k < -1:
        raise ValueError(f"{prefix}.top_k must be -1 (off) or >= 1, got {top_k}")
    if not 0 <= min_p < 1:
        raise ValueError(f"{prefix}.min_p must be in [0, 1), got {min_p}")
