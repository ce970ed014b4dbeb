"""Recording the distillation signal during training: `run_dir/inspect/step_N.jsonl.gz`, one JSON row per
inspected completion (the format: `sposd.inspect.records`).

When due (`train.inspect.every`), before the learner step (so the weights are those the loss differentiates),
each rank takes its first few distilled samples and runs ONE extra no-grad pass of the student on
[student prompt | completion] and of the teacher (the same teacher weights as the loss) on
[teacher context | completion]; `signal.per_position_signal` computes the per-token values with the loss's own op.
Every rank issues the same passes (ZeRO-3 gathers are collective): a rank without rows runs them on empty input.
Rank 0 gathers every rank's rows and writes the file atomically.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from pathlib import Path

import torch

from sposd import dist as sdist
from sposd.inspect.records import FORMAT_VERSION, step_path
from sposd.inspect.signal import per_position_signal


def inspection_due(every: int, step: int) -> bool:
    return bool(every) and (step == 1 or step % every == 0)


def record_inspection(c, step: int, kept, batch) -> dict[str, float]:
    """Record step `step`'s signal when `train.inspect.every` says so; returns {"time/inspect_s": ...} or {}.

    Args:
        c: the run's `Components` (config, learner, algorithm, tokenizer, rank, world, run_dir).
        kept: the step's kept `RolloutGroup`s, in the order of batch.samples.
        batch: the step's `LearnerBatch` (samples and their teacher requests).
    """
    icfg = c.cfg.train.inspect
    if not inspection_due(icfg.every, step):
        return {}
    t0 = time.perf_counter()
    comps = [(g, comp) for g in kept for comp in g.completions]
    per_rank = max(1, math.ceil(icfg.rows / c.world))
    idx = [i for i, s in enumerate(batch.samples) if s.distilled][:per_rank]
    tensors = inspect_samples(c.learner, [batch.samples[i] for i in idx], topk=icfg.topk)
    rows = [
        _row(c, step, batch.samples[i], comps[i], batch.advs[i], _request(batch, i), tensors, r)
        for r, i in enumerate(idx)
    ]
    gathered = sdist.all_gather_objects(rows)
    if c.rank == 0:
        everything = [dict(r, rank=k) for k, part in enumerate(gathered) for r in part]
        write_rows(step_path(c.run_dir, step), everything)
    return {"time/inspect_s": time.perf_counter() - t0}


def _request(batch, i: int):
    requests = getattr(batch, "requests", None)
    return requests[i] if requests else None


@torch.no_grad()
def inspect_samples(learner, samples, *, topk: int) -> dict[str, torch.Tensor] | None:
    """Per-position signal (`per_position_signal`) of `samples` (distilled `LearnerSample`s), from one student and
    one teacher pass (and the partner pass when the algorithm interpolates with one) on the learner's engines.

    Every rank must call this, with or without samples: the passes' ZeRO-3 gathers are collective.
    Returns None when no rank has a sample (then no pass ran anywhere) or this rank has none.
    """
    from sposd.learner import passes
    from sposd.learner.batching import collate

    if sdist.all_reduce([float(len(samples))], op="max")[0] == 0:
        return None
    engine, teacher, pad = learner.engine, learner.teacher, learner.pad_id
    shared_head = teacher is engine
    partner = bool(learner.algo.needs_partner_pass)
    if not samples:
        ops = [("hidden", "policy"), ("gather_head", "policy"), ("hidden", "teacher")]
        ops += [] if shared_head else [("gather_head", "teacher")]
        ops += [("hidden", "teacher"), ("gather_head", "teacher")] if partner else []
        passes.run_empty(ops, {"policy": engine, "teacher": teacher}, pad)
        return None
    smb = collate(samples, pad_id=pad)
    s_h = passes.hidden_states(engine, smb)
    s_head = passes.gathered_head(engine)
    t_h = passes.hidden_states(teacher, passes.teacher_mb(samples, [s.teacher_prompt_ids for s in samples], pad_id=pad))
    t_head = s_head if shared_head else passes.gathered_head(teacher)
    partner_logits = None
    if partner:
        ctxs = [s.partner_prompt_ids or s.teacher_prompt_ids for s in samples]
        partner_logits = passes.head_logits(teacher, passes.teacher_mb(samples, ctxs, pad_id=pad))
    T = min(s_h.shape[1], t_h.shape[1])
    dev = s_h.device
    term = _distill_term(learner.algo)
    out = per_position_signal(
        term,
        passes.logits_of(s_h[:, :T], *s_head),
        passes.logits_of(t_h[:, :T], *t_head),
        smb["completion_ids_BT"][:, :T].to(dev),
        torch.tensor([min(s.distill_len, T) for s in samples], device=dev),
        torch.tensor([s.distill_weight for s in samples], device=dev),
        partner=None if partner_logits is None else partner_logits[:, :T],
        topk=topk,
    )
    return {k: v.detach().cpu() for k, v in out.items()}


def _distill_term(algo):
    from sposd.algos.distill.term import DistillTerm

    return next(t for t in algo.terms if isinstance(t, DistillTerm))


def _row(c, step: int, sample, group_comp, adv: float, request, tensors: dict, r: int) -> dict:
    """One inspected completion as a JSON object (`sposd.inspect.records` documents the keys)."""
    tok = c.tokenizer
    g, comp = group_comp
    n = len(sample.completion_ids)
    context = tok.decode(sample.teacher_prompt_ids, skip_special_tokens=False)
    privileged = request.privileged if request is not None else ""
    at = context.rfind(privileged) if privileged else -1
    term = _distill_term(c.algo)
    d = term.cfg

    def col(key: str, digits: int = 5) -> list:
        return [_num(x, digits) for x in tensors[key][r, :n].tolist()]

    def top(who: str) -> list:
        ids, ps = tensors[f"{who}_top_DTK"][r, :n].tolist(), tensors[f"{who}_topp_DTK"][r, :n].tolist()
        pairs = (zip(ii, pp, strict=True) for ii, pp in zip(ids, ps, strict=True))
        return [[[_piece(tok, i), _num(p, 4)] for i, p in pos] for pos in pairs]

    return {
        "version": FORMAT_VERSION,
        "step": step,
        "row": r,
        "id": g.prompt.id,
        "problem": g.prompt.problem,
        "answer": g.prompt.answer,
        "solution": g.prompt.solution,
        "correct": bool(comp.correct),
        "reward": float(comp.reward),
        "advantage": float(adv),
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
        "tokens": [_piece(tok, t) for t in sample.completion_ids],
        "div": col("div_DT", 6),
        "div_raw": col("div_raw_DT", 6),
        "clipped": col("clipped_DT", 4),
        "weight": col("weight_DT", 6),
        "p_student": col("p_student_DT", 4),
        "p_teacher": col("p_teacher_DT", 4),
        "teacher_top": top("teacher"),
        "student_top": top("student"),
    }


def _piece(tok, token_id: int) -> str:
    return tok.decode([int(token_id)], skip_special_tokens=False)


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
