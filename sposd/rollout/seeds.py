"""Sampling seeds: every request carries its own, derived from where it is in the run.

A request's seed is a hash of (run seed, step, generation round, rank, prompt index), so a resumed run draws exactly
what the uninterrupted run drew, on every device: nothing depends on a global RNG (vLLM's GPU model runner draws
unseeded requests' seeds from numpy, the CPU one samples from torch's global generator). vLLM gives the n samples of
a request seeds `seed + i`; the hashes are spread over 62 bits, so these runs never meet another request's.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 62  # room for vLLM's seed + i (i < n) inside a signed 64-bit integer


def _hash(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def call_seed(seed: int, step: int, round_: int, rank: int) -> int:
    """The seed of one generate call: distinct for every (run seed, step, round, rank); rounds < 0 name evaluation
    calls (-1 held-out accuracy, -2 benchmarks)."""
    return _hash(seed, step, round_, rank)


def request_seeds(call: int, count: int) -> list[int]:
    """Per-prompt seeds of a call with `count` prompts: prompt i gets hash(call seed, i)."""
    return [_hash(call, i) for i in range(count)]
