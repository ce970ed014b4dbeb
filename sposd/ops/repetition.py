"""Does a completion end in a repetition loop? (the failure the per-element clip is reported to cause).

Pure Python. A completion ends in a loop when its last `repeats` x p tokens are one block of p tokens repeated
`repeats` times, for some period p, and the repeated tail spans at least `min_span` tokens (so a short natural
repetition, "...))))", does not count).
"""

from __future__ import annotations

from collections.abc import Sequence


def ends_in_loop(ids: Sequence[int], *, repeats: int = 4, min_span: int = 16, max_period: int = 256) -> bool:
    """True when `ids` ends with some block of p <= max_period tokens repeated at least `repeats` times in a row,
    covering at least `min_span` tokens.

    Args:
        ids: the completion's token ids.
        repeats: consecutive copies of the block at the end.
        min_span: the tail the copies cover must be at least this long (p x copies >= min_span).
        max_period: the longest block considered.
    """
    n = len(ids)
    for p in range(1, min(max_period, n // repeats) + 1):
        block = list(ids[n - p :])
        copies = 1
        while (copies + 1) * p <= n and list(ids[n - (copies + 1) * p : n - copies * p]) == block:
            copies += 1
        if copies >= repeats and copies * p >= min_span:
            return True
    return False
