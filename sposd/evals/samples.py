"""samples.jsonl: one graded sample per line, appended problem by problem, readable after any interruption.

`sposd eval` appends the k rows of each finished problem with one write, then flushes and fsyncs, so a kill
(even -9) can only tear the last line. `SampleStore.open` drops a torn last line and every row of a problem
that is not complete (exactly k rows, samples 0..k-1, the current settings fingerprint), rewrites the file with
what it keeps, and reports the problems already done: a restarted eval skips them, and nothing is counted twice.

`read_rows` is the strict reader of `sposd grade`: a malformed row raises one ValueError naming file:line and field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sposd.evals.metrics import ProblemOutcome
from sposd.logging import write_jsonl

# Fields `sposd grade` needs in every row: name -> (accepted types, description).
REQUIRED = {
    "benchmark": ((str,), "a string"),
    "id": ((str, int), "a string or integer"),
    "completion": ((str,), "a string"),
    "answer": ((str, int, float), "a string or number"),
}
OPTIONAL = {
    "num_tokens": ((int,), "an integer"),
    "truncated": ((bool,), "true or false"),
}


@dataclass
class ResumeState:
    """What `SampleStore.open` found: finished problems per benchmark, the rows kept, and what it dropped."""

    done: dict[str, set[str]]
    rows: list[dict]
    kept_rows: int
    dropped_rows: int
    torn_line: bool


class SampleStore:
    """Appends graded rows to a samples.jsonl; see the module docstring for the durability contract."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, *, k: int, fingerprints: dict[str, str]) -> ResumeState:
        """Read what an earlier run left, keep the complete problems, and rewrite the file if anything was dropped.

        Args:
            k: samples per problem of this run.
            fingerprints: benchmark -> settings fingerprint of this run. Rows of a benchmark not in this run are
                kept untouched (a later run may select it again).

        Raises:
            ValueError: a line other than the last is not valid JSON, or a row of a selected benchmark was
                generated with another fingerprint (different settings): such rows are never dropped.
        """
        rows, torn = _read_tolerant(self.path)
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            groups.setdefault((str(r.get("benchmark")), str(r.get("id"))), []).append(r)
        kept: list[dict] = []
        done: dict[str, set[str]] = {b: set() for b in fingerprints}
        for (bench, pid), grp in groups.items():
            if bench not in fingerprints:
                kept += grp
                continue
            fps = {r.get("fingerprint") for r in grp}
            if fps != {fingerprints[bench]}:  # never drop what other settings produced: refuse instead
                raise ValueError(
                    f"{self.path}: benchmark {bench!r} was sampled here with other settings (fingerprint "
                    f"{sorted(map(str, fps))}, now {fingerprints[bench]!r}); rerun with the same settings, or "
                    "choose a new run directory (hydra.run.dir=...)"
                )
            if sorted(r.get("sample", -1) for r in grp) == list(range(k)):
                kept += grp
                done[bench].add(pid)
        dropped = len(rows) - len(kept)
        if dropped or torn:
            write_jsonl(self.path, kept)
        return ResumeState(done=done, rows=kept, kept_rows=len(kept), dropped_rows=dropped, torn_line=torn)

    def append(self, rows: list[dict]) -> None:
        """Append rows with one write, then flush and fsync (a kill can only tear the last line)."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _read_tolerant(path: Path) -> tuple[list[dict], bool]:
    """Rows of a samples file and whether its last line was torn (no newline, or cut JSON) and ignored."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    last = lines.pop()  # "" when the file ends with a newline
    torn = bool(last.strip())
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); only the last line may be torn, so the "
                "file was changed by hand: fix or move it away to start over"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows, torn


def read_rows(path: Path) -> list[dict]:
    """Rows of a samples file for `sposd grade`, validated: each needs `benchmark`, `id`, `completion`, `answer`
    (REQUIRED) and may carry `num_tokens`, `truncated` (OPTIONAL).

    Raises:
        FileNotFoundError: no such file.
        ValueError: "<file>:<line>: ..." naming the first malformed row and its bad field.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{where}: expected a JSON object with fields {list(REQUIRED)}, got {type(row).__name__}"
                )
            for name, (types, desc) in REQUIRED.items():
                if name not in row:
                    raise ValueError(f"{where}: missing field {name!r}; each row needs {list(REQUIRED)}")
                _check_type(where, row, name, types, desc)
            for name, (types, desc) in OPTIONAL.items():
                if row.get(name) is not None:
                    _check_type(where, row, name, types, desc)
            if not str(row["answer"]).strip():
                raise ValueError(f"{where}: field 'answer' (the gold answer) is empty")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows; expected one JSON object per line with fields {list(REQUIRED)}")
    return rows


def _check_type(where: str, row: dict, name: str, types: tuple, desc: str) -> None:
    value = row[name]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ValueError(f"{where}: field {name!r} must be {desc}, got {type(value).__name__} {value!r:.40}")


def group_outcomes(rows: Iterable[dict]) -> dict[str, list[ProblemOutcome]]:
    """Graded rows (with `correct`, `extracted`) -> benchmark -> problems in first-seen order, samples in order."""
    by_bench: dict[str, dict[str, ProblemOutcome]] = {}
    for r in _sorted_samples(rows):
        probs = by_bench.setdefault(str(r["benchmark"]), {})
        pid = str(r["id"])
        p = probs.get(pid)
        if p is None:
            p = probs[pid] = ProblemOutcome(id=pid, correct=[], extracted=[], num_tokens=[], truncated=[])
        p.correct.append(bool(r["correct"]))
        p.extracted.append(r.get("extracted"))
        p.num_tokens.append(r.get("num_tokens"))
        p.truncated.append(r.get("truncated"))
    return {b: list(probs.values()) for b, probs in by_bench.items()}


def _sorted_samples(rows: Iterable[dict]) -> Iterator[dict]:
    """Rows in file order, except that rows of one problem with `sample` indices come in sample order."""
    rows = list(rows)
    if all("sample" in r for r in rows):
        order = {}
        for i, r in enumerate(rows):
            order.setdefault((str(r["benchmark"]), str(r["id"])), i)
        rows.sort(key=lambda r: (order[(str(r["benchmark"]), str(r["id"]))], r["sample"]))
    yield from rows
