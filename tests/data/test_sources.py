"""Tests for sposd/data/sources.py: toy, local JSONL / JSON / parquet with field mapping, HF loader, clear errors."""

from __future__ import annotations

import json

import pytest

from sposd.data.sources import HF_SOURCES, RECORD_KEYS, load_records, strip_dapo_instruction


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# rows shaped like the two hub presets
OPSD_ROWS = [{"problem": "What is 1+1?", "solution": "1+1=2, so \\boxed{2}.", "answer": "2"},
             {"problem": "What is 2*3?", "solution": "\\boxed{6}", "answer": "6"}]
DAPO_ROWS = [{"prompt": "Find x if x+1=3.", "solution": "2", "data_source": "math_dapo"},
             {"prompt": "Compute 7*6.", "solution": "42", "data_source": "math_dapo"}]


def test_toy_kind():
    recs = load_records(kind="toy", limit=20, seed=0)
    assert len(recs) == 20 and set(recs[0]) == set(RECORD_KEYS)
    held = load_records(kind="toy", split="heldout", limit=20, seed=0)
    assert not {r["problem"] for r in recs} & {r["problem"] for r in held}


def test_local_jsonl_identity_fields(tmp_path):
    recs = load_records(kind="local", path=write_jsonl(tmp_path / "opsd.jsonl", OPSD_ROWS))
    assert recs[0] == {"id": "opsd-0", "problem": "What is 1+1?", "answer": "2", "solution": "1+1=2, so \\boxed{2}."}
    assert [r["id"] for r in recs] == ["opsd-0", "opsd-1"]


def test_local_field_mapping_and_numbers(tmp_path):
    rows = [{"uid": 11, "q": "Compute 7*6.", "gt": 42}, {"uid": "b", "q": "Compute 1-3.", "gt": -2.5}]
    recs = load_records(kind="local", path=write_jsonl(tmp_path / "d.jsonl", rows),
                        fields={"id": "uid", "problem": "q", "answer": "gt"})
    assert [(r["id"], r["answer"], r["solution"]) for r in recs] == [("11", "42", None), ("b", "-2.5", None)]


def test_local_parquet_dapo_shape(tmp_path):
    path = write_parquet(tmp_path / "dapo.parquet", DAPO_ROWS)
    recs = load_records(kind="local", path=path, fields={"problem": "prompt", "answer": "solution"}, limit=1)
    assert recs == [{"id": "dapo-0", "problem": "Find x if x+1=3.", "answer": "2", "solution": None}]


def test_local_json_array_and_blank_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(OPSD_ROWS, indent=2))
    assert len(load_records(kind="local", path=tmp_path / "a.json")) == 2
    path = write_jsonl(tmp_path / "b.jsonl", [OPSD_ROWS[0], "", "   ", OPSD_ROWS[1]])
    assert len(load_records(kind="local", path=path)) == 2


@pytest.mark.parametrize(
    ("rows", "fields", "match"),
    [
        ([OPSD_ROWS[0], '{"problem": "x", "answer": '], None, r"bad\.jsonl: line 2: not valid JSON"),
        ([OPSD_ROWS[0], {"problem": "x"}], None, r"bad\.jsonl: line 2: missing field 'answer'.*valid keys"),
        ([{"question": "x", "answer": "1"}], None, r"line 1: missing field 'problem'.*\['answer', 'question'\]"),
        ([{"prompt": "x"}], {"problem": "prompt", "answer": "gt"}, r"missing field 'gt' \(for 'answer'\)"),
        ([{"problem": ["x"], "answer": "1"}], None, r"line 1: field 'problem' \(for 'problem'\) must be a string"),
        ([{"problem": "x", "answer": True}], None, r"field 'answer'.*must be a string or number, got bool"),
        ([{"problem": "  ", "answer": "1"}], None, r"field 'problem'.*is empty"),
        (["[1, 2]"], None, r"line 1: expected a JSON object"),
        ([OPSD_ROWS[0]], {"question": "problem"}, r"unknown keys \['question'\]; valid keys"),
    ],
)
def test_malformed_jsonl_errors_name_file_line_and_field(tmp_path, rows, fields, match):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        load_records(kind="local", path=path, fields=fields)


def test_malformed_parquet_row_and_file(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": None}])
    with pytest.raises(ValueError, match=r"p\.parquet: row 2: missing field 'answer'"):
        load_records(kind="local", path=path)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk\.parquet: cannot read as parquet"):
        load_records(kind="local", path=tmp_path / "junk.parquet")


def test_missing_file_and_bad_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(kind="local", path=tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_records(kind="local", path=tmp_path / "d.csv")
    with pytest.raises(ValueError, match=r"data.kind='s3' is not valid; choose from \['toy', 'local', 'hf'\]"):
        load_records(kind="s3")


def test_answer_from_solution(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"problem": "p", "solution": "so \\boxed{17}."}])
    assert load_records(kind="local", path=path, answer_from_solution=True)[0]["answer"] == "17"
    with pytest.raises(ValueError, match="missing field 'answer'"):
        load_records(kind="local", path=path)
    write_jsonl(path, [{"problem": "p", "solution": "no box"}])
    with pytest.raises(ValueError, match=r"no \\boxed\{\} answer"):
        load_records(kind="local", path=path, answer_from_solution=True)


def test_hf_kind_reads_a_local_dataset_dir(tmp_path, monkeypatch):
    """`datasets.load_dataset` on a local folder stands in for the hub (nothing can be downloaded here)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ds" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet", DAPO_ROWS)
    recs = load_records(kind="hf", hf_id=str(tmp_path / "ds"), split="train",
                        fields={"problem": "prompt", "answer": "solution"}, limit=5)
    assert [(r["problem"], r["answer"]) for r in recs] == [("Find x if x+1=3.", "2"), ("Compute 7*6.", "42")]


def test_hf_unreachable_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="cannot load Hugging Face dataset 'no-such-owner/no-such-set'"):
        load_records(kind="hf", hf_id="no-such-owner/no-such-set")


def test_presets():
    for hf_id, preset in HF_SOURCES.items():
        assert set(preset["fields"]) <= set(RECORD_KEYS) and {"problem", "answer"} <= set(preset["fields"])
        assert preset["split"] == "train", hf_id
    assert HF_SOURCES["open-r1/DAPO-Math-17k-Processed"]["fields"] == {"problem": "prompt", "answer": "solution"}
    wrapped = ("Solve the following math problem step by step. The last line of your response should be of the "
               "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\nFind x."
               '\n\nRemember to put your answer on its own line after "Answer:".')
    assert strip_dapo_instruction(wrapped) == "Find x."
    assert strip_dapo_instruction("Find x.") == "Find x."


def test_json_array_errors_and_binary_file(tmp_path):
    (tmp_path / "a.json").write_text('\n  [{"problem": "p", "answer": "1"}, {"problem": "q"}]')
    with pytest.raises(ValueError, match=r"a\.json: record 2: missing field 'answer'"):
        load_records(kind="local", path=tmp_path / "a.json")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"b\.jsonl: not UTF-8 text"):
        load_records(kind="local", path=tmp_path / "b.jsonl")
