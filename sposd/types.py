"""Data passed between layers: prompts, completions, groups. Plain dataclasses, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One training or evaluation problem, already rendered for the student.

    Attributes:
        id: stable identifier (dataset row id or a generated one).
        problem: the bare problem text (no instruction suffix, no chat template).
        prompt_ids: token ids of the student context c_S (chat template applied, generation prompt added).
        answer: the gold final answer used by the verifier.
        solution: a verified reference solution, if the dataset has one (privileged context for OPSD-style teachers).
        meta: anything else a data source wants to carry (kept in samples/*.jsonl).
    """

    id: str
    problem: str
    prompt_ids: list[int]
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    """One sampled completion of a prompt.

    Attributes:
        token_ids: generated token ids (EOS / end-of-turn included when the model produced it).
        text: decoded text of token_ids (special tokens skipped).
        logprobs: behaviour-policy log-prob of each generated token as reported by the rollout engine (or None).
        finish_reason: "stop" (EOS or a stop string) or "length" (hit max_new_tokens).
        reward: verifier reward, filled in after generation (plus any shaping).
        correct: the verifier's binary verdict (reward before shaping), filled in after generation.
        answer_class: completions of a group whose extracted answers are equivalent share this id (None: no
            answer); filled in only for algorithms that vote (U-OPSD's majority, `sposd.algos.majority`).
    """

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = "stop"
    reward: float = 0.0
    correct: bool = False
    answer_class: int | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class RolloutGroup:
    """G completions of one prompt."""

    prompt: Prompt
    completions: list[Completion]

    @property
    def rewards(self) -> list[float]:
        return [c.reward for c in self.completions]

    @property
    def pass_rate(self) -> float:
        return sum(c.correct for c in self.completions) / max(len(self.completions), 1)

    @property
    def is_mixed(self) -> bool:
        return 0.0 < self.pass_rate < 1.0
