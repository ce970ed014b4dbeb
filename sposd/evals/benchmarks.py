"""Evaluation benchmarks: resolve a `benchmarks.<name>` config to its problems and render their prompts.

The dataset ids, splits and column names of the named benchmarks live in `conf/benchmarks/*.yaml`; this module
turns one `BenchmarkCfg` into records (`id`, `problem`, `answer`) through the same loaders as the training data
(`sposd.data.sources`), so errors name the file, line and field the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sposd.config import BenchmarkCfg, DataCfg, EvalCfg
from sposd.types import Prompt

IDENTITY_FIELDS = {"id": "id", "problem": "problem", "answer": "answer"}
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Benchmark:
    """One benchmark, loaded and resolved.

    Attributes:
        name: the key under `benchmarks`.
        records: problems in dataset order (`id`, `problem`, `answer`), after `limit`.
        source: where they came from: kind, and hf_id / hf_config / split or path, and the column mapping.
        prompt: the user-message template (`{problem}` placeholder).
        enable_thinking: the chat template's thinking switch.
    """

    name: str
    records: list[dict]
    source: dict
    prompt: str
    enable_thinking: bool
    prompts: list[Prompt] = field(default_factory=list)


def resolve_source(bench: BenchmarkCfg, *, data: DataCfg, seed: int) -> dict:
    """Where a benchmark's problems come from, as keyword arguments of `sposd.data.sources.load_records`.

    A `path` makes any benchmark local; its columns are `fields` over the same names. Without a path, a Hub
    benchmark reads `hf_id`/`split` with `hf_fields` updated by `fields`. The toy benchmark generates the held-out
    split with the `data.*` knobs and `seed` (the held-out problems `sposd train` scores).
    """
    if bench.kind == "toy":
        return dict(
            kind="toy",
            split="heldout",
            seed=seed,
            max_operand=data.max_operand,
            min_terms=data.min_terms,
            max_terms=data.max_terms,
        )
    chosen = {k: v for k, v in bench.fields.items() if v}
    if bench.path:
        return dict(kind="local", path=bench.path, fields={**IDENTITY_FIELDS, **chosen})
    return dict(
        kind="hf",
        hf_id=bench.hf_id,
        hf_config=bench.hf_config,
        split=bench.split,
        fields={**IDENTITY_FIELDS, **bench.hf_fields, **chosen},
    )


def problem_limit(bench: BenchmarkCfg, ev: EvalCfg, *, data: DataCfg) -> int | None:
    """How many problems to take: the benchmark's own limit, else eval.limit, else all (toy: data.num_heldout)."""
    limit = bench.limit if bench.limit is not None else ev.limit
    if bench.kind == "toy":
        return min(limit, data.num_heldout) if limit is not None else data.num_heldout
    return limit


def load_benchmark(name: str, bench: BenchmarkCfg, ev: EvalCfg, *, data: DataCfg, seed: int) -> Benchmark:
    """Load one benchmark's problems (raises FileNotFoundError / ValueError naming the bad file, row or field).

    Args:
        name: its key under `benchmarks`.
        bench: its config; ev: the evaluation settings (default prompt, thinking switch, limit).
        data: the toy task's knobs (toy benchmark only); seed: the toy held-out draw.
    """
    from sposd.data.sources import load_records

    source = resolve_source(bench, data=data, seed=seed)
    if source["kind"] == "local":
        path = Path(source["path"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"benchmarks.{name}.path={bench.path!r} does not exist (or is not a file)")
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise ValueError(
                f"benchmarks.{name}.path={bench.path!r}: unsupported file type {path.suffix!r}; "
                f"use one of {list(LOCAL_SUFFIXES)}"
            )
    limit = problem_limit(bench, ev, data=data)
    # a named id column (benchmarks.<b>.fields.id, or the preset's) must exist: never positional ids instead
    named_id = bool(bench.fields.get("id") or bench.hf_fields.get("id"))
    try:
        records = load_records(**source, limit=limit, require_id=named_id if source["kind"] != "toy" else None)
    except ValueError as e:
        msg = str(e).replace("data.fields", f"benchmarks.{name}.fields")  # the loader speaks of training data
        if source["kind"] == "hf":
            msg += f"; or read a local copy: benchmarks.{name}.path=<file.jsonl|file.parquet>"
        raise ValueError(msg) from None
    if not records:
        raise ValueError(f"benchmarks.{name}: no problems in {_describe(source)}")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(
            f"benchmarks.{name}: problem id {dup!r} appears more than once in {_describe(source)}; "
            f"ids must be unique (map another column with benchmarks.{name}.fields.id=<column>)"
        )
    recorded = {k: v for k, v in source.items() if k not in ("max_operand", "min_terms", "max_terms")}
    if source["kind"] == "toy":
        recorded["knobs"] = {k: source[k] for k in ("max_operand", "min_terms", "max_terms")}
    return Benchmark(
        name=name,
        records=[{k: r[k] for k in ("id", "problem", "answer")} for r in records],
        source={**recorded, "limit": limit},
        prompt=bench.prompt if bench.prompt is not None else ev.prompt,
        enable_thinking=bench.enable_thinking if bench.enable_thinking is not None else ev.enable_thinking,
    )


def user_message(template: str, problem: str) -> str:
    """The user turn: `template` with `{problem}` replaced (not str.format: templates hold `\\boxed{}`)."""
    return template.replace("{problem}", problem)


def render_prompts(bench: Benchmark, tokenizer) -> list[Prompt]:
    """Chat-templated prompt ids of every problem (generation prompt added), cached on `bench.prompts`."""
    from sposd.data.templates import render_prompt_ids

    if not bench.prompts:
        bench.prompts = [
            Prompt(
                id=r["id"],
                problem=r["problem"],
                prompt_ids=render_prompt_ids(
                    tokenizer, user_message(bench.prompt, r["problem"]), enable_thinking=bench.enable_thinking
                ),
                answer=r["answer"],
                meta={"benchmark": bench.name},
            )
            for r in bench.records
        ]
    return bench.prompts


def _describe(source: dict) -> str:
    if source["kind"] == "local":
        return str(source["path"])
    if source["kind"] == "hf":
        return f"{source['hf_id']} (split {source['split']})"
    return "the toy task's held-out split"
