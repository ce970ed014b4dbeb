"""The plan of a learner step, pure (no DeepSpeed, no torch.distributed): micro-batches, which rows get which
passes, the normalisers, and the schedule of passes that every rank runs.

Under ZeRO-3 every module forward / backward and every explicit gather of a parameter is a collective: all
ranks must issue them in the same order, or the job hangs. The schedule is therefore built from what every rank
contributes (`RankSummary`, exchanged once before the first pass) by the same pure function on every rank, so
all ranks hold the same list of passes by construction. A rank with fewer (or no) rows at some pass runs that
pass on empty input: the learner's one `run_empty` interprets the pass's `ops`, the collectives the pass
issues, in order.

Pass kinds (one optimizer step, in order):
    prepass  j      teacher + student hidden states of micro-batch j's distilled rows (per-token weights)
    teacher  j      the teacher's forward on micro-batch j's distilled rows
    score    j, k   the teacher's log-probs of micro-batch j's completions under scoring context k
    student  j      the student's forward with grad, the loss, backward and an optimizer micro-step
and, for the frozen log-probs of a batch (old policy, KL reference):
    logp     j      a no-grad forward of the policy or the reference on micro-batch j
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

# An op is (action, model). Actions: "hidden" (a no-grad forward of the body: final hidden states), "gather_head"
# (an explicit gather of the output layer), "hidden_grad" (the body's forward with grad), "head_call" (the output
# layer's module call that hands its weight to the ops, `passes.policy_head`), "backward", "step".
# Models: "policy", "teacher", "ref".
Op = tuple[str, str]


def plan_micro_batches(
    lengths: list[tuple[int, int]], max_tokens: int, *, prompt_keys: list[int] | None = None
) -> list[list[int]]:
    """Group samples into micro-batches whose padded size fits max_tokens.

    Without prompt_keys a micro-batch costs rows x (max prompt + max completion); samples are sorted by total
    length first so each micro-batch pads little. With prompt_keys (one per sample, equal for equal prompts: the
    passes then run each distinct prompt once) it costs distinct prompts x max prompt + rows x max completion, and
    samples are sorted by (prompt length, prompt, completion length) so a group's completions share micro-batches.
    A single sample longer than the budget gets a micro-batch of its own.

    Args:
        lengths: (prompt_len, completion_len) per sample.
        max_tokens: padded-token budget per micro-batch.
        prompt_keys: the prompt's identity per sample (e.g. a hash of its tokens), or None.
    Returns: lists of sample indices.
    """
    if prompt_keys is None:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0] + lengths[i][1], i))
    else:
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0], prompt_keys[i], lengths[i][1], i))
    plans: list[list[int]] = []
    cur: list[int] = []
    keys: set[int] = set()
    max_p = max_t = 0
    for i in order:
        p, t = lengths[i]
        new_p, new_t = max(max_p, p), max(max_t, t)
        if prompt_keys is None:
            cost = (len(cur) + 1) * (new_p + new_t)
        else:
            cost = len(keys | {prompt_keys[i]}) * new_p + (len(cur) + 1) * new_t
        if cur and cost > max_tokens:
            plans.append(cur)
            cur, keys, new_p, new_t = [], set(), p, t
        cur.append(i)
        if prompt_keys is not None:
            keys.add(prompt_keys[i])
        max_p, max_t = new_p, new_t
    if cur:
        plans.append(cur)
    return plans


@dataclass(frozen=True)
class Row:
    """What the plan needs of one learner sample (`Row.of(sample)`)."""

    context: int  # student prompt tokens
    completion: int
    distilled: bool
    kept: bool  # counts in the loss (loss_weight > 0)
    distill_units: float = 0.0
    prompt_key: int = 0  # equal for equal student prompts

    @staticmethod
    def of(sample) -> Row:
        return Row(
            prompt_key=hash(tuple(sample.prompt_ids)),
            context=len(sample.prompt_ids),
            completion=len(sample.completion_ids),
            distilled=sample.distilled,
            kept=sample.loss_weight > 0,
            distill_units=sample.distill_units if sample.distilled else 0.0,
        )


@dataclass(frozen=True)
class RankSummary:
    """One rank's contribution to the step's plan (all-gathered before the first pass)."""

    num_tokens: int  # completion tokens of kept rows
    num_seqs: int  # kept rows
    distill_units: float
    teacher_flags: tuple[bool, ...]  # per local micro-batch: it holds distilled rows


@dataclass(frozen=True)
class Pass:
    kind: str  # prepass | teacher | partner | score | student | logp
    micro_batch: int
    ops: tuple[Op, ...]
    k: int = 0  # the scoring context of a "score" pass


@dataclass(frozen=True)
class PassShape:
    """How the learner's passes issue collectives (fixed for a learner: its algorithm and teacher)."""

    has_teacher: bool
    teacher_distinct: bool  # the teacher is a separate engine (else the policy under no_grad)
    prepass: bool  # per-token weights from a pass over the whole batch first
    score_contexts: int  # K scoring passes per micro-batch
    partner: bool = False  # a second teacher pass on each distilled row's partner context (PAINT's full solution)


def prepass_ops(shape: PassShape) -> tuple[Op, ...]:
    heads = (("gather_head", "teacher"),) + ((("gather_head", "policy"),) if shape.teacher_distinct else ())
    return (("hidden", "teacher"), ("hidden", "policy"), *heads)


def teacher_ops() -> tuple[Op, ...]:
    return (("hidden", "teacher"), ("gather_head", "teacher"))


def score_ops() -> tuple[Op, ...]:
    return (("hidden", "teacher"), ("gather_head", "teacher"))


def student_ops() -> tuple[Op, ...]:
    return (("hidden_grad", "policy"), ("head_call", "policy"), ("backward", "policy"), ("step", "policy"))


def logp_ops(model: str) -> tuple[Op, ...]:
    return (("hidden", model), ("gather_head", model))


@dataclass(frozen=True)
class StepPlan:
    """The same on every rank except `rows`: this rank's sample indices per micro-batch (() = none here)."""

    rows: tuple[tuple[int, ...], ...]
    teacher_at: tuple[bool, ...]  # a teacher pass at micro-batch j (on every rank)
    num_tokens: float
    num_seqs: float
    distill_units: float
    passes: tuple[Pass, ...]

    @property
    def num_micro_batches(self) -> int:
        return len(self.rows)

    def at(self, j: int, kind: str) -> list[Pass]:
        return [p for p in self.passes if p.micro_batch == j and p.kind == kind]


def local_micro_batches(rows: list[Row], budget: int, *, share_prompts: bool = False) -> list[list[int]]:
    """This rank's micro-batches (sample indices), distilled rows first in each: their student outputs are
    then the leading D rows of the micro-batch. With share_prompts a distinct prompt costs its tokens once."""
    keys = [r.prompt_key for r in rows] if share_prompts else None
    plan = plan_micro_batches([(r.context, r.completion) for r in rows], budget, prompt_keys=keys)
    return [sorted(idx, key=lambda i: not rows[i].distilled) for idx in plan]


def summarize(rows: list[Row], micro_batches: list[list[int]]) -> RankSummary:
    kept = [r for r in rows if r.kept]
    return RankSummary(
        num_tokens=sum(r.completion for r in kept),
        num_seqs=len(kept),
        distill_units=sum(r.distill_units for r in rows if r.distilled),
        teacher_flags=tuple(any(rows[i].distilled for i in mb) for mb in micro_batches),
    )


def build_step_plan(micro_batches: list[list[int]], summaries: list[RankSummary], shape: PassShape) -> StepPlan:
    """The step's schedule from every rank's summary (identical on every rank) and this rank's micro-batches.

    The number of micro-batches is the largest of any rank; a teacher pass runs at micro-batch j when any rank
    has distilled rows there. The prepass runs at the same micro-batches, before any student pass.
    """
    n = max((len(s.teacher_flags) for s in summaries), default=0)
    teacher_at = tuple(
        shape.has_teacher and any(j < len(s.teacher_flags) and s.teacher_flags[j] for s in summaries) for j in range(n)
    )
    passes: list[Pass] = []
    if shape.prepass:
        passes += [Pass("prepass", j, prepass_ops(shape)) for j in range(n) if teacher_at[j]]
    for j in range(n):
        if teacher_at[j]:
            passes.append(Pass("teacher", j, teacher_ops()))
            if shape.partner:
                passes.append(Pass("partner", j, teacher_ops()))
        passes += [Pass("score", j, score_ops(), k=k) for k in range(shape.score_contexts)]
        passes.append(Pass("student", j, student_ops()))
    rows = tuple(tuple(micro_batches[j]) if j < len(micro_batches) else () for j in range(n))
    return StepPlan(
        rows=rows,
        teacher_at=teacher_at,
        num_tokens=float(sum(s.num_tokens for s in summaries)),
        num_seqs=float(sum(s.num_seqs for s in summaries)),
        distill_units=float(sum(s.distill_units for s in summaries)),
        passes=tuple(passes),
    )


def logp_schedule(micro_batches: list[list[int]], counts: list[int], model: str) -> list[tuple[tuple[int, ...], Pass]]:
    """The no-grad log-prob passes over a batch: as many as the rank with the most micro-batches (`counts`: every
    rank's number), each with this rank's rows (() = none here)."""
    n = max(counts, default=0)
    return [
        (tuple(micro_batches[j]) if j < len(micro_batches) else (), Pass("logp", j, logp_ops(model))) for j in range(n)
    ]


def balance_ranks(lengths: list[int], world: int) -> list[list[int]]:
    """Assign samples to ranks so their token loads match: longest first, each to the least-loaded rank (LPT).

    Every ZeRO-3 gather waits for the slowest rank, so the step time follows the heaviest rank's tokens.
    Deterministic (ties go to the lower rank), so every rank computes the same assignment from the same
    gathered lengths.

    Args:
        lengths: tokens (prompt + completion) of every sample of the step, in a global order.
        world: ranks.
    Returns: per rank, the global indices of its samples (ascending).
    """
    loads = [(0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, r = heapq.heappop(loads)
        out[r].append(i)
        heapq.heappush(loads, (load + lengths[i], r))
    return [sorted(o) for o in out]


def padded_tokens(lengths: list[tuple[int, int]], budget: int) -> int:
    """Tokens a rank's micro-batches hold with padding: sum of rows x (longest prompt + longest completion)."""
    return sum(
        len(mb) * (max(lengths[i][0] for i in mb) + max(lengths[i][1] for i in mb))
        for mb in plan_micro_batches(lengths, budget)
    )
