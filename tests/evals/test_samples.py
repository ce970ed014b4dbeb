"""Tests for sposd/evals/samples.py: resume keeps complete problems only, survives a torn last line, refuses other
settings; `sposd grade`'s reader names file:line and field of a malformed row."""

from __future__ import annotations

import json

import pytest

from sposd.evals.samples import SampleStore, group_outcomes, read_rows


def _rows(pid: str, k: int, *, fp: str = "F", bench: str = "b", correct=None) -> list[dict]:
    return [
        {"benchmark": bench, "id": pid, "sample": i, "completion": "x", "answer": "1", "fingerprint": fp,
         "correct": bool(correct and correct[i]), "extracted": "1"}
        for i in range(k)
    ]  # fmt: skip


def test_append_then_open_keeps_complete_problems(tmp_path):
    store = SampleStore(tmp_path / "samples.jsonl")
    store.append(_rows("p1", 3) + _rows("p2", 3))
    state = store.open(k=3, fingerprints={"b": "F"})
    assert state.done == {"b": {"p1", "p2"}}
    assert (state.kept_rows, state.dropped_rows, state.torn_line) == (6, 0, False)


def test_incomplete_problem_and_torn_line_are_dropped_and_the_file_rewritten(tmp_path):
    path = tmp_path / "samples.jsonl"
    store = SampleStore(path)
    store.append(_rows("p1", 3))
    store.append(_rows("p2", 3)[:2])  # a problem with 2 of its 3 samples
    with open(path, "a") as f:
        f.write('{"benchmark": "b", "id": "p3", "sam')  # killed mid-line
    state = store.open(k=3, fingerprints={"b": "F"})
    assert state.done == {"b": {"p1"}}
    assert (state.kept_rows, state.dropped_rows, state.torn_line) == (3, 2, True)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["p1"] * 3  # nothing left to be counted twice
    store.append(_rows("p2", 3))
    assert store.open(k=3, fingerprints={"b": "F"}).done == {"b": {"p1", "p2"}}


def test_duplicated_samples_make_a_problem_incomplete(tmp_path):
    store = SampleStore(tmp_path / "samples.jsonl")
    store.append(_rows("p1", 2) + _rows("p1", 2))  # 4 rows, samples 0, 1, 0, 1
    state = store.open(k=2, fingerprints={"b": "F"})
    assert state.done == {"b": set()} and state.dropped_rows == 4


def test_other_settings_are_refused_not_dropped(tmp_path):
    path = tmp_path / "samples.jsonl"
    store = SampleStore(path)
    store.append(_rows("p1", 2, fp="OLD") + _rows("p2", 1, fp="OLD"))
    before = path.read_text()
    with pytest.raises(ValueError, match="other settings"):
        store.open(k=2, fingerprints={"b": "NEW"})
    assert path.read_text() == before


def test_rows_of_unselected_benchmarks_are_kept(tmp_path):
    store = SampleStore(tmp_path / "samples.jsonl")
    store.append(_rows("p1", 2, bench="other", fp="X") + _rows("p1", 1))
    state = store.open(k=2, fingerprints={"b": "F"})
    assert state.done == {"b": set()} and state.kept_rows == 2 and state.dropped_rows == 1


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(_rows("p1", 1)[0]) + "\nnot json\n" + json.dumps(_rows("p2", 1)[0]) + "\n")
    with pytest.raises(ValueError, match=r"samples\.jsonl:2: not valid JSON"):
        SampleStore(path).open(k=1, fingerprints={"b": "F"})


def test_group_outcomes_orders_samples_within_a_problem():
    rows = _rows("p1", 3, correct=[True, False, False])
    grouped = group_outcomes([rows[2], rows[0], rows[1]])
    assert [p.id for p in grouped["b"]] == ["p1"]
    assert grouped["b"][0].correct == [True, False, False]


def _write(tmp_path, *rows) -> object:
    path = tmp_path / "in.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"benchmark": "aime24", "id": "1", "completion": "\\boxed{5}", "answer": "5"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not json", r"in\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"in\.jsonl:2: expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "completion"}, r"in\.jsonl:2: missing field 'completion'"),
        ({**GOOD, "completion": 5}, r"in\.jsonl:2: field 'completion' must be a string, got int"),
        ({**GOOD, "id": True}, r"in\.jsonl:2: field 'id' must be a string or integer, got bool"),
        ({**GOOD, "answer": None}, r"in\.jsonl:2: field 'answer' must be a string or number, got NoneType"),
        ({**GOOD, "answer": " "}, r"in\.jsonl:2: field 'answer' \(the gold answer\) is empty"),
        ({**GOOD, "num_tokens": "12"}, r"in\.jsonl:2: field 'num_tokens' must be an integer, got str"),
    ],
)
def test_read_rows_names_file_line_and_field(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        read_rows(_write(tmp_path, GOOD, bad))


def test_read_rows_accepts_numbers_and_skips_blank_lines(tmp_path):
    rows = read_rows(_write(tmp_path, {**GOOD, "id": 7, "answer": 25}, "", GOOD))
    assert [r["id"] for r in rows] == [7, "1"]


def test_read_rows_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        read_rows(tmp_path / "empty.jsonl")
