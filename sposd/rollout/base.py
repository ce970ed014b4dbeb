"""The interface the training loop needs from a rollout engine (vLLM in production, a fake in unit tests)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from sposd.types import Prompt, RolloutGroup


@dataclass(frozen=True)
class SamplingCfg:
    """Per-call sampling settings (temperature, nucleus, top-k, min-p, length; logprobs: return each sampled
    token's log-prob, which training needs and evaluation does not; seed: the call's seed, from which each
    prompt's request seed is derived (`sposd.rollout.seeds`); None draws it from torch's RNG)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64
    seed: int | None = None
    min_p: float = 0.0
    logprobs: bool = True


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg) -> list[RolloutGroup]:
        """Sample n completions per prompt; returns one group per prompt, in order."""
        ...

    def generate_stream(
        self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg
    ) -> Iterator[list[RolloutGroup]]:
        """Like generate, but yields groups as they finish (in any order), in one or more lists."""
        ...

    def load_weights(self, named: Iterable[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights in place from (HF parameter name, full tensor) pairs, streamed."""
        ...

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-prob (temperature 1) the engine assigns to each completion token given the prompt."""
        ...

    def close(self) -> None: ...
