"""Every gold answer of the four benchmark files verifies against `\\boxed{gold}` through the pool."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sposd.rewards.verifier import VerifierPool

BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"
if not BENCHMARKS.is_dir():
    pytest.skip(f"{BENCHMARKS} (benchmark files beside the repo) is not present", allow_module_level=True)

NAMES = ["aime24", "aime25", "hmmt25", "math500"]
SIZES = {"aime24": 30, "aime25": 30, "hmmt25": 30, "math500": 500}


def _rows(name: str) -> list[dict]:
    with (BENCHMARKS / f"{name}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2) as p:
        yield p


@pytest.mark.parametrize("name", NAMES)
def test_every_gold_verifies_against_itself(pool, name):
    rows = _rows(name)
    assert len(rows) == SIZES[name]
    verdicts = pool.grade([(f"The final answer is $\\boxed{{{r['answer']}}}$.", r["answer"]) for r in rows])
    assert [r["id"] for r, ok in zip(rows, verdicts, strict=True) if not ok] == []


@pytest.mark.parametrize("name", NAMES)
def test_wrong_integer_is_rejected(pool, name):
    rows = [r for r in _rows(name) if re.fullmatch(r"\d+", r["answer"])]
    assert rows
    verdicts = pool.grade([(f"\\boxed{{{int(r['answer']) + 1}}}", r["answer"]) for r in rows])
    assert [r["id"] for r, ok in zip(rows, verdicts, strict=True) if ok] == []


def test_hmmt_two_value_answer_in_either_order(pool):
    gold = next(r["answer"] for r in _rows("hmmt25") if r["id"] == "hmmt25-10")
    first, second = (part.strip() for part in gold.split(","))
    completions = [f"\\boxed{{{second}, {first}}}", f"\\boxed{{{first}}}", f"\\boxed{{{second}}}"]
    assert pool.grade([(c, gold) for c in completions]) == [True, False, False]
