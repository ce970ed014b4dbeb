"""Recording the distillation signal during training: `run_dir/inspect/step_N.jsonl.gz`, one JSON row per
inspected completion (the format: `sposd.inspect.records`).

When due (`train.inspect.every`), each rank marks its first few distilled samples (`LearnerSample.inspect_key`) and
hands the learner an `InspectTap`. The learner's student pass calls it with every micro-batch's distilled rows and
their `DistillBatch` before the loss: the tap reads the marked rows' student and teacher logits (the step's own
hidden states and output layers, detached; no extra forward, no collective) and `signal.per_position_signal`
computes the per-token values with the loss's own function. After the step, every rank's captures and row
descriptions are gathered and rank 0 writes the file atomically.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from sposd import dist as sdist
from sposd.inspect.records import FORMAT_VERSION, step_path
from sposd.inspect.signal import per_position_signal


def inspection_due(every: int, step: int) -> bool:
    return bool(every) and (step == 1 or step % every == 0)


class InspectTap:
    """The learner's tap: per-position signal of the marked samples, from the first micro-batch that holds each.

    With several optimiser steps per batch (ppo_epochs, num_minibatches) a sample is captured at its first pass,
    whose policy is the one that sampled it (an importance ratio of 1, as the recording assumes).

    Args:
        term: the algorithm's `DistillTerm`. topk: alternatives per position.
    """

    def __init__(self, term, *, topk: int) -> None:
        self.term, self.topk = term, topk
        self.captured: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, drows, db) -> None:
        idx = [i for i, s in enumerate(drows) if s.inspect_key is not None and s.inspect_key not in self.captured]
        if not idx:
            return
        t0 = time.perf_counter()
        sel = torch.tensor(idx, device=db.tokens_DT.device)
        out = per_position_signal(
            self.term,
            _rows_of(db.student_logits_DTV, sel),
            _rows_of(db.teacher_logits_DTV, sel),
            db.tokens_DT[sel],
            db.lengths_D[sel],
            db.weight_D[sel],
            token_weight_DT=None if db.token_weight_DT is None else db.token_weight_DT[sel],
            partner=None if db.partner_logits_DTV is None else _rows_of(db.partner_logits_DTV, sel),
            topk=self.topk,
        )
        for r, i in enumerate(idx):
            self.captured[drows[i].inspect_key] = {k: v[r].cpu() for k, v in out.items()}
        self.seconds += time.perf_counter() - t0


def _rows_of(logits, sel: torch.Tensor):
    """Rows `sel` of the learner's logits, detached, as a fresh object (the loss may record PAINT's interpolation
    on the original; this copy carries none)."""
    from sposd.ops.fused import HiddenLogits

    if isinstance(logits, HiddenLogits):
        bias = None if logits.bias is None else logits.bias.detach()
        return HiddenLogits(logits.hidden[sel].detach(), logits.weight.detach(), bias)
    return logits[sel].detach().clone()


@contextmanager
def inspection(c, step: int, kept, batch):
    """Around the learner step: record step `step`'s signal when `train.inspect.every` says so. Yields the metrics
    dict it fills after the step ({"time/inspect_s": ...}, or nothing when not due). Every rank must enter it.

    Args:
        c: the run's `Components` (config, learner, algorithm, tokenizer, rank, world, run_dir).
        kept: the step's kept `RolloutGroup`s, in the order of batch.samples.
        batch: the step's `LearnerBatch` (samples and their teacher requests).
    """
    metrics: dict[str, float] = {}
    icfg = c.cfg.train.inspect
    if not inspection_due(icfg.every, step):
        yield metrics
        return
    per_rank = max(1, math.ceil(icfg.rows / c.world))
    chosen = [i for i, s in enumerate(batch.samples) if s.distilled][:per_rank]
    for k, i in enumerate(chosen):
        batch.samples[i].inspect_key = (c.rank, k)
    tap = c.learner.inspect_tap = InspectTap(_distill_term(c.algo), topk=icfg.topk)
    try:
        yield metrics
    finally:
        c.learner.inspect_tap = None
        for i in chosen:
            batch.samples[i].inspect_key = None
    t0 = time.perf_counter()
    comps = [(g, comp) for g in kept for comp in g.completions]
    described = {(c.rank, k): _describe(c, step, batch, comps, i) for k, i in enumerate(chosen)}
    parts = sdist.all_gather_objects((described, tap.captured))  # a sample may have moved rank (rank balancing)
    if c.rank == 0:
        captured = {key: t for _, cap in parts for key, t in cap.items()}
        described = dict(sorted((key, d) for part, _ in parts for key, d in part.items() if key in captured))
        rows = [_with_signal(c, d, captured[key], r) for r, (key, d) in enumerate(described.items())]
        write_rows(step_path(c.run_dir, step), rows)
    metrics["time/inspect_s"] = tap.seconds + time.perf_counter() - t0


def _distill_term(algo):
    from sposd.algos.distill.term import DistillTerm

    return next(t for t in algo.terms if isinstance(t, DistillTerm))


def _describe(c, step: int, batch, comps, i: int) -> dict:
    """What a row records besides the signal (`sposd.inspect.records` documents the keys)."""
    tok, sample, request = c.tokenizer, batch.samples[i], batch.requests[i] if batch.requests else None
    g, comp = comps[i]
    context = tok.decode(sample.teacher_prompt_ids, skip_special_tokens=False)
    privileged = request.privileged if request is not None else ""
    at = context.rfind(privileged) if privileged else -1
    term = _distill_term(c.algo)
    d = term.cfg
    return {
        "version": FORMAT_VERSION,
        "step": step,
        "rank": c.rank,
        "id": g.prompt.id,
        "problem": g.prompt.problem,
        "answer": g.prompt.answer,
        "solution": g.prompt.solution,
        "correct": bool(comp.correct),
        "reward": float(comp.reward),
        "advantage": float(batch.advs[i]),
        "group_pass_rate": g.pass_rate,
        "distill_weight": float(sample.distill_weight),
        "distill_len": int(sample.distill_len),
        "loss": {
            "divergence": term.divergence,
            "beta": d.beta,
            "support": d.support,
            "topk": d.topk,
            "clip_max": d.clip_max,
            "clip_mode": d.clip_mode,
            "sampled_token": d.sampled_token,
            "temperature": term.temperature,
        },
        "prompt": tok.decode(sample.prompt_ids, skip_special_tokens=False),
        "teacher_context": context,
        "privileged": [at, at + len(privileged)] if at >= 0 else None,
        "completion_ids": list(sample.completion_ids),
    }


def _with_signal(c, desc: dict, tensors: dict[str, torch.Tensor], r: int) -> dict:
    """The row `r` of the step's file: its description and the captured per-token signal, tokens decoded."""
    ids = desc.pop("completion_ids")
    n = len(ids)
    pieces = _Pieces(c.tokenizer)

    def col(key: str, digits: int) -> list:
        return [_num(x, digits) for x in tensors[key][:n].tolist()]

    def top(who: str) -> list:
        tid, tp = tensors[f"{who}_top_DTK"][:n].tolist(), tensors[f"{who}_topp_DTK"][:n].tolist()
        return [[[pieces(i), _num(p, 4)] for i, p in zip(ii, pp, strict=True)] for ii, pp in zip(tid, tp, strict=True)]

    return {
        **desc,
        "row": r,
        "tokens": [pieces(t) for t in ids],
        "div": col("div_DT", 6),
        "div_raw": col("div_raw_DT", 6),
        "clipped": col("clipped_DT", 4),
        "weight": col("weight_DT", 6),
        "p_student": col("p_student_DT", 4),
        "p_teacher": col("p_teacher_DT", 4),
        "teacher_top": top("teacher"),
        "student_top": top("student"),
    }


class _Pieces:
    """Token id -> its decoded text, each id decoded once."""

    def __init__(self, tok) -> None:
        self.tok, self.cache = tok, {}

    def __call__(self, token_id: int) -> str:
        piece = self.cache.get(token_id)
        if piece is None:
            piece = self.cache[token_id] = self.tok.decode([int(token_id)], skip_special_tokens=False)
        return piece


def _num(x: float, digits: int) -> float:
    """x to `digits` significant digits (a compact file; the values are for reading, not for resuming)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else 0.0


def write_rows(path: Path, rows: list[dict]) -> None:
    """gzip-compressed JSONL, written to a temporary file and renamed (a reader never sees a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows).encode()
    with open(tmp, "wb") as f:
        f.write(gzip.compress(data, mtime=0))
    os.replace(tmp, path)
