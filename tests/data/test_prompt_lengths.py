"""fit_prompt_lengths: prompts longer than model.max_prompt_len are named (or skipped and counted) at load."""

from __future__ import annotations

import pytest

from sposd.data.sources import fit_prompt_lengths
from sposd.errors import UserError


def _records(*problems: str) -> list[dict]:
    return [{"id": f"r{i}", "problem": p, "answer": "1"} for i, p in enumerate(problems)]


class CharPrompt:
    """A template of 10 tokens around the problem, one token per character (counts its renders)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, rec: dict) -> int:
        self.calls += 1
        return 10 + len(rec["problem"])


def test_long_record_is_named_at_load():
    # max_len 30: 10 + 25 = 35 tokens for r1 is too long
    with pytest.raises(UserError, match=r"data=local: record 'r1' renders to a 35-token prompt, longer than "
                                        r"model.max_prompt_len=30.*data.long_prompts=skip"):  # fmt: skip
        fit_prompt_lengths(_records("a" * 5, "b" * 25), CharPrompt(), max_len=30, policy="error", where="data=local")


def test_skip_drops_and_counts_them():
    kept, skipped = fit_prompt_lengths(_records("a", "b" * 25, "c" * 40, "d"), CharPrompt(), max_len=30,
                                       policy="skip", where="data=x")  # fmt: skip
    assert [r["id"] for r in kept] == ["r0", "r3"] and skipped == 2
    with pytest.raises(UserError, match="every record is longer"):
        fit_prompt_lengths(_records("b" * 25), CharPrompt(), max_len=30, policy="skip", where="data=x")


def test_short_problems_are_not_rendered():
    # overhead: 10 (template) + 8 (seam margin) = 18; problems of <= 12 bytes fit max_len 30 without a render
    counter = CharPrompt()
    kept, skipped = fit_prompt_lengths(_records(*["x" * 12] * 1000), counter, max_len=30, policy="error", where="d")
    assert (len(kept), skipped, counter.calls) == (1000, 0, 1)  # the one render measured the template
