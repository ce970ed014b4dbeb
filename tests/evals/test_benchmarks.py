"""Tests for sposd/evals/benchmarks.py: every benchmark name resolves to its dataset id, split and columns, or to a
local JSONL / parquet file; the toy benchmark is the training held-out split; bad files fail with one message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sposd.config import EvalCfg, register_configs, register_resolvers, to_object
from sposd.evals.benchmarks import load_benchmark, resolve_source, user_message

CONF = Path(__file__).resolve().parents[2] / "conf"
register_resolvers()
register_configs()

# name -> (Hub id, split, our key -> column). Columns from the dataset cards: HuggingFaceH4/aime_2024 (id,
# problem, solution, answer, url, year), MathArena/* (problem_idx, problem, answer, problem_type),
# HuggingFaceH4/MATH-500 (problem, solution, answer, subject, level, unique_id).
EXPECTED = {
    "aime24": ("HuggingFaceH4/aime_2024", "train", {"id": "id", "problem": "problem", "answer": "answer"}),
    "aime25": ("MathArena/aime_2025", "train", {"id": "problem_idx", "problem": "problem", "answer": "answer"}),
    "hmmt25": ("MathArena/hmmt_feb_2025", "train", {"id": "problem_idx", "problem": "problem", "answer": "answer"}),
    "math500": ("HuggingFaceH4/MATH-500", "test", {"id": "unique_id", "problem": "problem", "answer": "answer"}),
}
SIZES = {"aime24": 30, "aime25": 30, "hmmt25": 30, "math500": 500}


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("eval", overrides=list(overrides)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_names_resolve_to_hub_ids_splits_and_columns(name):
    cfg = _cfg(f"benchmarks=[{name}]")
    src = resolve_source(cfg.benchmarks[name], data=cfg.data, seed=0)
    hf_id, split, fields = EXPECTED[name]
    assert src == {"kind": "hf", "hf_id": hf_id, "hf_config": None, "split": split, "fields": fields}


def test_every_benchmark_option_composes():
    options = sorted(p.stem for p in (CONF / "benchmarks").glob("*.yaml"))
    assert options == ["aime24", "aime25", "hmmt25", "local", "math500", "toy"]
    cfg = _cfg(f"benchmarks=[{','.join(options)}]", "benchmarks.local.path=x.jsonl")
    assert list(cfg.benchmarks) == options


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_path_makes_a_benchmark_local(name, shared_dir):
    path = shared_dir / "data" / "benchmarks" / f"{name}.jsonl"
    cfg = _cfg(f"benchmarks=[{name}]", f"benchmarks.{name}.path={path}")
    # the local file's columns are id/problem/answer, whatever the Hub columns are
    assert resolve_source(cfg.benchmarks[name], data=cfg.data, seed=0) == {
        "kind": "local",
        "path": str(path),
        "fields": {"id": "id", "problem": "problem", "answer": "answer"},
    }
    bench = load_benchmark(name, cfg.benchmarks[name], cfg.eval, data=cfg.data, seed=0)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert len(bench.records) == SIZES[name]
    assert bench.records[0] == {k: first[k] for k in ("id", "problem", "answer")}
    assert bench.source["kind"] == "local" and bench.source["limit"] is None


def test_parquet_file_with_mapped_columns_and_limit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"uid": ["a", "b", "c"], "question": ["1+1?", "2+2?", "3+3?"], "gold": [2, 4, 6]}), path)
    cfg = _cfg(
        "benchmarks=[local]",
        f"benchmarks.local.path={path}",
        "benchmarks.local.fields.id=uid",
        "benchmarks.local.fields.problem=question",
        "benchmarks.local.fields.answer=gold",
        "benchmarks.local.limit=2",
    )
    bench = load_benchmark("local", cfg.benchmarks["local"], cfg.eval, data=cfg.data, seed=0)
    assert bench.records == [
        {"id": "a", "problem": "1+1?", "answer": "2"},
        {"id": "b", "problem": "2+2?", "answer": "4"},
    ]


def test_eval_limit_applies_unless_the_benchmark_sets_its_own(shared_dir):
    path = shared_dir / "data" / "benchmarks" / "math500.jsonl"
    cfg = _cfg("benchmarks=[math500]", f"benchmarks.math500.path={path}", "eval.limit=7")
    assert len(load_benchmark("math500", cfg.benchmarks["math500"], cfg.eval, data=cfg.data, seed=0).records) == 7
    cfg = _cfg("benchmarks=[math500]", f"benchmarks.math500.path={path}", "eval.limit=7", "benchmarks.math500.limit=3")
    assert len(load_benchmark("math500", cfg.benchmarks["math500"], cfg.eval, data=cfg.data, seed=0).records) == 3


def test_toy_benchmark_is_the_training_heldout_split():
    from sposd.data.toy import toy_records

    cfg = _cfg("benchmarks=[toy]", "data.num_heldout=20")
    bench = load_benchmark("toy", cfg.benchmarks["toy"], cfg.eval, data=cfg.data, seed=3)
    expected = toy_records(20, seed=3, split="heldout")  # what `sposd train seed=3` scores as held-out accuracy
    assert [r["problem"] for r in bench.records] == [r["problem"] for r in expected]
    # the toy task keeps its training prompt and no thinking, whatever the eval preset says
    assert (bench.prompt, bench.enable_thinking) == ("Problem: {problem}\n\nPut the final answer in \\boxed{}.", False)


def test_default_prompt_is_the_opsd_user_message():
    ev = _cfg().eval
    assert isinstance(ev, EvalCfg) and ev.enable_thinking
    msg = user_message(ev.prompt, "What is $1+1$?")
    assert msg == "What is $1+1$?\n\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_missing_or_unsupported_files_name_the_key(tmp_path):
    cfg = _cfg("benchmarks=[aime24]", f"benchmarks.aime24.path={tmp_path}/nope.jsonl")
    with pytest.raises(FileNotFoundError, match=r"benchmarks\.aime24\.path=.*nope\.jsonl.* does not exist"):
        load_benchmark("aime24", cfg.benchmarks["aime24"], cfg.eval, data=cfg.data, seed=0)
    (tmp_path / "x.csv").write_text("id,problem,answer\n")
    cfg = _cfg("benchmarks=[aime24]", f"benchmarks.aime24.path={tmp_path}/x.csv")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_benchmark("aime24", cfg.benchmarks["aime24"], cfg.eval, data=cfg.data, seed=0)


def test_malformed_row_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "q"}\n')
    cfg = _cfg("benchmarks=[local]", f"benchmarks.local.path={path}")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: missing field 'answer'.*benchmarks\.local\.fields"):
        load_benchmark("local", cfg.benchmarks["local"], cfg.eval, data=cfg.data, seed=0)


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "a", "problem": "q", "answer": "2"}\n')
    cfg = _cfg("benchmarks=[local]", f"benchmarks.local.path={path}")
    with pytest.raises(ValueError, match="problem id 'a' appears more than once"):
        load_benchmark("local", cfg.benchmarks["local"], cfg.eval, data=cfg.data, seed=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.k=0"], "eval.k must be >= 1"),
        (["eval.top_p=0"], "eval.top_p"),
        (["eval.prompt=no placeholder"], "eval.prompt must contain {problem}"),
        (["benchmarks=[local]"], "benchmarks.local.path"),
        (["benchmarks=[toy]", "benchmarks.toy.limit=0"], "benchmarks.toy.limit must be >= 1"),
        (["benchmarks=[aime24]", "+benchmarks.aime24.fields.question=q"], "benchmarks.aime24.fields has unknown keys"),
        (["benchmarks=[]"], "no benchmarks selected"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        _cfg(*overrides)
