"""Peak memory of a block of learner work (the `mem/learn_peak_gb` metric and the memory benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of a block above what was in use when it started, in GB (None where it cannot be measured).

    CUDA: the caching allocator's peak counter. CPU (Linux): the process's peak resident set (VmHWM), reset to the
    current RSS through /proc/self/clear_refs, so the figure covers the new resident memory the block touched;
    memory the allocator hands out again from its already-resident free lists is not counted (a lower bound in a
    long-running process).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda" and torch.cuda.is_available()
        self.base: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.base = _status_bytes("VmRSS")
            except (OSError, ValueError):
                self.base = None
        return self

    def __exit__(self, *exc) -> None:
        pass

    @property
    def peak_gb(self) -> float | None:
        if self.base is None:
            return None
        peak = torch.cuda.max_memory_allocated() if self.cuda else _status_bytes("VmHWM")
        return max(peak - self.base, 0) / 2**30


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{field} is not in /proc/self/status")
