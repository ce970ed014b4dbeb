"""vLLM and the learner on the same GPUs: who holds the memory when.

The sequence verl and TRL use for colocated engines, one step at a time:

    generate -> engine.sleep(level)                     (after the rollouts: weights and KV cache released)
             -> learner.train_step                      (the learner has the GPU)
             -> free_cached_memory()                    (the learner's cached-but-free blocks back to the driver:
                                                          vLLM maps its memory outside torch's caching allocator)
             -> engine.wake_up(["weights"]) -> push_weights -> free_cached_memory()
             -> engine.wake_up(["kv_cache"])            (the KV cache is never mapped while sync buffers exist)
             -> generate ...

Level 2 (the default) discards vLLM's weights while asleep: the sync rewrites every parameter anyway. Level 1 copies
them to pinned host memory and back, a model-sized copy each way every step, kept for vLLM versions where a level-2
wake needs a reload it would not get. On CPU the engine ignores sleep, but the loop makes the same calls in the same
order, which the CPU suite checks with a recording engine.
"""

from __future__ import annotations

import gc
from collections.abc import Callable


def free_cached_memory() -> None:
    """Collect garbage and return torch's cached, unused GPU blocks to the driver (no-op without CUDA)."""
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Colocation:
    """Drives the sleep / wake / sync sequence around the learner's step.

    Args:
        engine: a rollout engine with `sleep(level)` and `wake_up(tags)`.
        level: vLLM sleep level (1 or 2).
        free_memory: called where cached learner memory must be returned (tests pass a recorder).
    """

    def __init__(self, engine, *, level: int = 2, free_memory: Callable[[], None] = free_cached_memory) -> None:
        if level not in (1, 2):
            raise ValueError(f"vLLM sleep level must be 1 or 2, got {level}")
        self.engine, self.level, self.free_memory = engine, level, free_memory

    def release(self) -> None:
        """After the rollouts: give the learner the engine's memory."""
        self.engine.sleep(level=self.level)

    def sync(self, push: Callable[[], dict]) -> dict:
        """After the learner's step: wake the weights, run `push` (the weight sync), then wake the KV cache.

        Returns what `push` returns (its metrics).
        """
        self.free_memory()
        self.engine.wake_up(tags=["weights"])
        metrics = push()
        self.free_memory()
        self.engine.wake_up(tags=["kv_cache"])
        return metrics
