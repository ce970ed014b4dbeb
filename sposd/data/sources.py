"""Training records from the toy task, a local JSONL / parquet file, or a Hugging Face dataset.

Every source yields the same record schema: `id` (str), `problem` (str), `answer` (str), `solution`
(str or None). `fields` maps those keys to the source's column names. A malformed file raises one
`ValueError` naming the file, the line (JSONL) or row (parquet, HF), the bad field and the valid keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sposd.data.toy import toy_records

RECORD_KEYS = ("id", "problem", "answer", "solution")
KINDS = ("toy", "local", "hf")

# DAPO-Math-17k's prompts wrap the problem in an "Answer:"-line instruction; our template adds its own.
_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

# Presets for the Hugging Face sets the configs name. Column names were checked against public sources where
# possible (see `checked`); none of these can be fetched on the machines the tests run on.
HF_SOURCES: dict[str, dict[str, Any]] = {
    "siyanzhao/Openthoughts_math_30k_opsd": {
        "config": None,
        "split": "train",
        "fields": {"problem": "problem", "solution": "solution", "answer": "answer"},
        # If the set has no `answer` column, the gold answer is the last \boxed{} of the reference solution.
        "answer_from_solution": True,
        "strip_dapo_instruction": False,
        "checked": "problem/solution: OPSD's training code (problem_field/solution_field defaults, "
        "data_collator.py); `answer`: not confirmed, hence answer_from_solution",
    },
    "open-r1/DAPO-Math-17k-Processed": {
        "config": "en",  # the set has configs all / en / cn
        "split": "train",
        "fields": {"problem": "prompt", "answer": "solution"},  # `solution` holds the ground-truth answer
        "answer_from_solution": False,
        "strip_dapo_instruction": True,
        "checked": "create_dataset.py on the hub: prompt = source_prompt[0].content, "
        "solution = reward_model.ground_truth; configs all/en/cn",
    },
}


def load_records(
    *,
    kind: str,
    path: str | os.PathLike | None = None,
    hf_id: str | None = None,
    hf_config: str | None = None,
    split: str = "train",
    fields: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    max_operand: int = 19,
    min_terms: int = 2,
    max_terms: int = 3,
    solution_style: str = "own",
    answer_from_solution: bool | None = None,
    require_id: bool | None = None,
) -> list[dict]:
    """Load records of one source.

    Args:
        kind: "toy" (generated), "local" (a .jsonl / .json / .parquet file at `path`) or "hf" (`hf_id`).
        hf_config: the HF dataset config (subset) name; defaults to the HF_SOURCES preset's.
        split: toy: "train" | "heldout"; hf: the split name; local: ignored.
        fields: our key -> source column, for keys in RECORD_KEYS; unnamed keys map to themselves
            (for hf ids in HF_SOURCES, to the preset's columns). `problem` and `answer` are required;
            `id` defaults to "<source>-<row>", `solution` to None.
        limit: keep the first `limit` records (toy: generate that many).
        seed, max_operand, min_terms, max_terms, solution_style: toy task only.
        answer_from_solution: when a row has no answer column, use the last \\boxed{} of its solution
            (default: the preset's setting for hf ids, else False).
        require_id: a row without the id column is an error rather than "<source>-<row>" (default: when `fields`
            or the preset maps id to another column: a mapped column that is missing must not become positional
            ids).
    """
    if kind not in KINDS:
        raise ValueError(f"data.kind={kind!r} is not valid; choose from {list(KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"data.limit must be >= 0, got {limit}")
    if kind == "toy":
        return toy_records(limit, seed=seed, split=split, max_operand=max_operand, min_terms=min_terms,
                           max_terms=max_terms, solution_style=solution_style)

    preset = HF_SOURCES.get(hf_id or "", {}) if kind == "hf" else {}
    mapping = _field_mapping(fields, preset.get("fields"))
    from_solution = preset.get("answer_from_solution", False) if answer_from_solution is None else answer_from_solution
    strip_dapo = preset.get("strip_dapo_instruction", False)
    if require_id is None:  # `id: id` is the identity default (conf/data/local.yaml), not a choice of column
        require_id = ((fields or {}).get("id") or (preset.get("fields") or {}).get("id") or "id") != "id"
    if kind == "local":
        if not path:
            raise ValueError("data.kind=local needs data.path=<file.jsonl|file.parquet>")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"data.path={str(path)!r} does not exist (or is not a file)")
        rows, source, default_id = _read_local(p), str(p), p.stem
    else:
        if not hf_id:
            raise ValueError("data.kind=hf needs data.hf_id=<owner/name>")
        rows, source = _read_hf(hf_id, hf_config or preset.get("config"), split, limit), hf_id
        default_id = hf_id.rsplit("/", 1)[-1]

    out = []
    for n, (where, row) in enumerate(rows):
        if limit is not None and n >= limit:
            break
        rec = _to_record(row, mapping, where=f"{source}: {where}", default_id=f"{default_id}-{n}",
                         answer_from_solution=from_solution, require_id=require_id)
        if strip_dapo:
            rec["problem"] = strip_dapo_instruction(rec["problem"])
        out.append(rec)
    return out


def strip_dapo_instruction(problem: str) -> str:
    """Remove DAPO-Math-17k's "Answer:"-line instruction around a problem, if present."""
    problem = problem.removeprefix(_DAPO_PREFIX)
    return problem.removesuffix(_DAPO_SUFFIX)


# ---- helpers ------------------------------------------------------------------------------------------------
def _field_mapping(fields: dict[str, str] | None, preset: dict[str, str] | None) -> dict[str, str | None]:
    """Our key -> source column: the explicit mapping, else the preset's, else the same name.

    A key falls back to its own name only if no other key claims that column: DAPO's `solution` column holds
    the gold answer (`answer: solution`), so it must not also become the reference solution.
    """
    fields = {k: v for k, v in (fields or {}).items() if v}
    bad = sorted(set(fields) - set(RECORD_KEYS))
    if bad:
        raise ValueError(f"data.fields has unknown keys {bad}; valid keys: {list(RECORD_KEYS)}")
    mapping = {**(preset or {}), **fields}
    claimed = set(mapping.values())
    return {k: mapping.get(k) or (k if k not in claimed else None) for k in RECORD_KEYS}


def _read_local(p: Path) -> Iterator[tuple[str, Any]]:
    """("line N" / "record N" / "row N", row) pairs of a local file; N is 1-based."""
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(p)
    raise ValueError(f"data.path={str(p)!r}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def _read_jsonl(p: Path) -> Iterator[tuple[str, Any]]:
    try:
        yield from _read_jsonl_text(p)
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_jsonl_text(p: Path) -> Iterator[tuple[str, Any]]:
    with open(p, encoding="utf-8") as f:
        head = f.read(4096).lstrip()[:1] if p.suffix.lower() == ".json" else ""
        f.seek(0)
        if head == "[":  # a .json file holding one array of objects
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise ValueError(f"{p}: expected a JSON array of objects or one JSON object per line")
            yield from ((f"record {i}", row) for i, row in enumerate(data, start=1))
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                 "expected one JSON object per line") from None
            yield f"line {lineno}", row


def _read_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise ValueError(f"{p}: cannot read as parquet ({type(e).__name__}: {e})") from None
    return ((f"row {i}", row) for i, row in enumerate(table.to_pylist(), start=1))


def _read_hf(hf_id: str, config: str | None, split: str, limit: int | None) -> Iterable[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(hf_id, config, split=split)
    except Exception as e:  # network, missing config or split, offline mode: report, do not dump a trace
        raise ValueError(f"cannot load Hugging Face dataset {hf_id!r} (config {config!r}, split {split!r}): "
                         f"{type(e).__name__}: {e}") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ((f"row {i}", row) for i, row in enumerate(ds, start=1))


def _to_record(
    row: Any,
    mapping: dict[str, str | None],
    *,
    where: str,
    default_id: str,
    answer_from_solution: bool,
    require_id: bool = False,
) -> dict:
    """Validate one source row and return it in our schema."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with fields, got {type(row).__name__}")

    def get(key: str) -> Any:
        return None if mapping[key] is None else row.get(mapping[key])

    def missing(key: str) -> ValueError:
        col = mapping[key]
        return ValueError(f"{where}: missing field {col!r} (for {key!r}); the record has {sorted(row)}; "
                          f"map columns with data.fields (valid keys: {list(RECORD_KEYS)})")

    def text(key: str, value: Any, *, allow_number: bool) -> str:
        ok = (str,) + ((int, float) if allow_number else ())
        if isinstance(value, bool) or not isinstance(value, ok):
            raise ValueError(f"{where}: field {mapping[key]!r} (for {key!r}) must be a "
                             f"{'string or number' if allow_number else 'string'}, got {type(value).__name__}")
        value = str(value)
        if not value.strip():
            raise ValueError(f"{where}: field {mapping[key]!r} (for {key!r}) is empty")
        return value

    if get("problem") is None:
        raise missing("problem")
    problem = text("problem", get("problem"), allow_number=False)

    solution = get("solution")
    solution = None if solution is None else text("solution", solution, allow_number=False)

    if get("answer") is not None:
        answer = text("answer", get("answer"), allow_number=True)
    elif answer_from_solution and solution is not None:
        from sposd.rewards.extract import extract_last_boxed

        answer = extract_last_boxed(solution)
        if not answer:
            raise ValueError(f"{where}: no {mapping['answer']!r} field and no \\boxed{{}} answer in the solution")
    else:
        raise missing("answer")

    rid = get("id")
    if rid is None and require_id:
        raise missing("id")
    rid = default_id if rid is None else text("id", rid, allow_number=True)
    return {"id": rid, "problem": problem, "answer": answer, "solution": solution}


# ---- prompt lengths -----------------------------------------------------------------------------------------
# Tokens a problem's text may gain at the seams with its template (a byte-level token covers at least one byte,
# so a problem of B UTF-8 bytes renders to at most B tokens plus the template's own, give or take a merge).
_SEAM_TOKENS = 8


def fit_prompt_lengths(
    records: list[dict], prompt_len: Callable[[dict], int], *, max_len: int, policy: str, where: str
) -> tuple[list[dict], int]:
    """Check every record's rendered prompt against max_len at load; returns (records kept, records skipped).

    Only records whose cheap bound (the template's tokens + the problem's UTF-8 bytes) could exceed max_len are
    rendered, so a set of short problems costs one render.

    Args:
        prompt_len: the rendered prompt's token count of a record.
        policy: data.long_prompts: "error" (UserError naming the first long record) or "skip" (drop them).
        where: the data set, named in the message (e.g. "data=local").

    Raises:
        UserError: a long record under "error", or every record skipped.
    """
    from sposd.errors import UserError

    if not records:
        return records, 0
    overhead = prompt_len({**records[0], "problem": ""}) + _SEAM_TOKENS
    kept, skipped = [], 0
    for rec in records:
        if overhead + len(rec["problem"].encode()) <= max_len or (n := prompt_len(rec)) <= max_len:
            kept.append(rec)
            continue
        if policy == "error":
            raise UserError(
                f"{where}: record {rec['id']!r} renders to a {n}-token prompt, longer than model.max_prompt_len="
                f"{max_len}; raise model.max_prompt_len, or drop such records with data.long_prompts=skip"
            )
        skipped += 1
    if not kept:
        raise UserError(f"{where}: every record is longer than model.max_prompt_len={max_len}")
    return kept, skipped
