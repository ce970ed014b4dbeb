"""A scripted rollout engine for unit tests of the loop's logic (no model, no vLLM)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from torch import Tensor

from sposd.rollout.base import SamplingCfg
from sposd.types import Completion, Prompt, RolloutGroup


class ScriptedEngine:
    """Returns completions chosen by `script(prompt, i) -> text`, tokenised with `encode`.

    Records every call so tests can check what the loop asked for (prompts, n, weight loads, the order of
    generate / sleep / wake_up / load_weights calls).
    """

    def __init__(
        self,
        script: Callable[[Prompt, int], str],
        encode: Callable[[str], list[int]],
        *,
        max_new_tokens_truncates: bool = True,
    ) -> None:
        self.script, self.encode, self.truncates = script, encode, max_new_tokens_truncates
        self.generate_calls: list[tuple[int, int]] = []
        self.weight_loads = 0
        self.calls: list[str] = []  # generate / load_weights / sleep / wake_up, in order
        self.seeds: list[int | None] = []  # SamplingCfg.seed of every generate call

    def generate(self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg) -> list[RolloutGroup]:
        self.generate_calls.append((len(prompts), n))
        self.calls.append("generate")
        self.seeds.append(sampling.seed)
        groups = []
        for p in prompts:
            comps = []
            for i in range(n):
                text = self.script(p, i)
                ids = self.encode(text)
                truncated = self.truncates and len(ids) > sampling.max_new_tokens
                ids = ids[: sampling.max_new_tokens]
                comps.append(
                    Completion(
                        token_ids=ids,
                        text=text,
                        logprobs=[-1.0] * len(ids),
                        finish_reason="length" if truncated else "stop",
                    )
                )
            groups.append(RolloutGroup(prompt=p, completions=comps))
        return groups

    def generate_stream(
        self, prompts: Sequence[Prompt], *, n: int, sampling: SamplingCfg, chunk: int = 2
    ) -> Iterator[list[RolloutGroup]]:
        """`generate`, yielded `chunk` groups at a time in reverse order (as an engine may finish them)."""
        groups = self.generate(prompts, n=n, sampling=sampling)[::-1]
        for i in range(0, len(groups), chunk):
            yield groups[i : i + chunk]

    def load_weights(self, named: Iterable[tuple[str, Tensor]]) -> None:
        for _ in named:  # drain: the producer may be a collective that every rank must finish
            pass
        self.weight_loads += 1
        self.calls.append("load_weights")

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        return [-1.0] * len(completion_ids)

    def sleep(self, level: int = 2) -> None:
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None) -> None:
        self.calls.append(f"wake_up({','.join(tags) if tags else 'all'})")

    def close(self) -> None: ...
