"""Reward shaping applied after verification (DAPO overlong soft punishment).

Legend: B completions.
"""

from __future__ import annotations

from torch import Tensor


def overlong_penalty(length_B: Tensor, *, max_len: int, cache_len: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, added to the verifier reward.

    R(L) = 0 for L <= max_len - cache_len; ((max_len - cache_len) - L) / cache_len * factor for
    max_len - cache_len < L <= max_len; -factor for L > max_len.

    Args:
        length_B: completion lengths in tokens.
        max_len: L_max, the generation budget.
        cache_len: L_cache, the length of the linear-penalty band (0 < cache_len <= max_len).
        factor: penalty at and beyond max_len (verl `overlong_penalty_factor`).
    Returns: penalty_B (float, <= 0).
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong cache_len must be in (0, max_len={max_len}], got {cache_len}")
    frac_B = ((max_len - cache_len) - length_B) / cache_len  # true division: ints become float
    return frac_B.clamp(-1.0, 0.0) * factor
