"""One step's rollouts and what the learner learns from them.

prompts -> vLLM groups (+ DAPO-style refills) -> math-verify verdicts -> the algorithm's rewards and filter
        -> advantages, loss weights, teacher / scoring contexts -> `LearnerSample`s
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace

import torch

from sposd.errors import UserError
from sposd.learner.batching import LearnerSample
from sposd.rollout.seeds import call_seed
from sposd.types import RolloutGroup


class PromptSampler:
    """Endless shuffled pass over the records; each rank takes every world-th prompt of each batch."""

    def __init__(self, records: list[dict], *, seed: int, rank: int, world: int):
        self.records, self.rng, self.rank, self.world = records, random.Random(seed), rank, world
        self.order: list[int] = []

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "num_records": len(self.records)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_records"] != len(self.records):
            raise UserError(
                f"the checkpoint was taken on {state['num_records']} training records, this data has "
                f"{len(self.records)}: resume with the same data (or train.resume=never)"
            )
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])

    def next(self, n: int) -> list[dict]:
        batch = []
        while len(batch) < n:
            if not self.order:
                self.order = list(range(len(self.records)))
                self.rng.shuffle(self.order)
            batch.append(self.records[self.order.pop()])
        return batch[self.rank :: self.world]


def grade(groups: list[RolloutGroup], verifier) -> None:
    """Set Completion.correct from the verifier (one pooled call for the whole batch)."""
    pairs = [(c.text, g.prompt.answer) for g in groups for c in g.completions]
    verdicts = verifier.grade(pairs) if pairs else []
    it = iter(verdicts)
    for g in groups:
        for c in g.completions:
            c.correct = bool(next(it))


# generation rounds of the evaluations (rollouts use 0, 1, ... for their refills)
HELDOUT_ROUND, BENCHMARK_ROUND = -1, -2


def reseed(seed: int, step: int, round_: int, rank: int) -> None:
    """Reseed this process's torch RNG from (seed, step, generation round, rank) before an evaluation: a generate
    call without a seed draws its requests' seeds from it (`sposd.rollout.seeds`), so a resumed run's evaluations
    draw what the uninterrupted run's drew."""
    torch.manual_seed(call_seed(seed, step, round_, rank))


@dataclass
class Rollouts:
    """One step's groups: all that were generated, and those the algorithm keeps for the learner."""

    generated: list[RolloutGroup] = field(default_factory=list)
    kept: list[RolloutGroup] = field(default_factory=list)
    rollout_s: float = 0.0
    verify_s: float = 0.0


def collect_rollouts(c, step: int) -> Rollouts:
    """G completions per prompt from the current weights, graded and filtered; with dynamic sampling, further
    rounds until enough informative groups are kept (or `algo.max_gen_batches` rounds ran).

    Args:
        c: the run's `Components` (config, engine, sampler, verifier, algorithm, rank and world).
    """
    cfg, algo = c.cfg, c.algo
    t0 = time.perf_counter()
    out = Rollouts()
    for round_ in range(cfg.algo.max_gen_batches if cfg.algo.dynamic_sampling else 1):
        prompts = [c.to_prompt(r) for r in c.sampler.next(cfg.prompts_per_step)]
        # every request's seed derives from (seed, step, round, rank, prompt index): exact resume on any device
        sampling = replace(c.sampling, seed=call_seed(cfg.seed, step, round_, c.rank))
        groups = c.engine.generate(prompts, n=cfg.algo.group_size, sampling=sampling)
        tv = time.perf_counter()
        grade(groups, c.verifier)
        if algo.needs_answer_classes:  # majority voting (U-OPSD): which answers agree
            from sposd.algos.majority import label_answer_classes

            label_answer_classes(groups, c.verifier.grade)
        out.verify_s += time.perf_counter() - tv
        algo.shape_rewards(groups, max_new_tokens=c.sampling.max_new_tokens)
        out.generated += groups
        out.kept += algo.filter_groups(groups)  # informative groups only
        if len(out.kept) * c.world >= cfg.prompts_per_step:
            break
    out.kept = out.kept[: max(1, cfg.prompts_per_step // c.world)] if out.kept else []
    out.rollout_s = time.perf_counter() - t0 - out.verify_s
    return out


@dataclass
class LearnerBatch:
    """The learner's samples of one step, with the per-completion advantages and what could not be built."""

    samples: list[LearnerSample]
    advs: list[float]
    too_long: int = 0  # teacher contexts longer than the model allows (skipped)
    score_fallback: int = 0  # samples scored under their own prompt (a scoring context missing or too long)
    requests: list = field(default_factory=list)  # each sample's TeacherRequest or None (`sposd inspect` shows it)


def learner_batch(kept: list[RolloutGroup], *, algo, teacher_prompts) -> LearnerBatch:
    """Advantages, per-sample loss weights and teacher / scoring contexts of the kept groups -> learner samples."""
    advs, weights = algo.advantages(kept), algo.loss_mask_weight(kept)
    requests = algo.distill_requests(kept, cut_reference=teacher_prompts.cut_reference)
    scoring = algo.score_requests(kept)
    comps = [(g, c) for g in kept for c in g.completions]
    batch = LearnerBatch(samples=[], advs=advs, requests=requests)
    for (g, c), a, w, req, ctxs in zip(comps, advs, weights, requests, scoring, strict=True):
        s = LearnerSample(
            prompt_ids=g.prompt.prompt_ids,
            completion_ids=c.token_ids,
            adv=a,
            loss_weight=w,
            rollout_logprobs=c.logprobs,
        )
        if req is not None:
            ids = teacher_prompts.render_context(g.prompt, req.context, completion_len=len(c.token_ids))
            if ids is None:
                batch.too_long += 1
            else:
                s.teacher_prompt_ids, s.distill_weight = ids, req.weight
                s.distill_len, s.distill_units = req.num_positions, req.units
                if req.partner is not None:  # a too-long partner context: the teacher's own again
                    s.partner_prompt_ids = teacher_prompts.render_context(
                        g.prompt, req.partner, completion_len=len(c.token_ids)
                    )
        if algo.num_score_contexts:  # a context that is missing or too long: the student's own prompt
            ids = (
                [teacher_prompts.render_context(g.prompt, x, completion_len=len(c.token_ids)) for x in ctxs]
                if ctxs is not None
                else [None] * algo.num_score_contexts
            )
            batch.score_fallback += any(x is None for x in ids)
            s.score_prompt_ids = [x if x is not None else g.prompt.prompt_ids for x in ids]
        s.loss_weight = algo.rl_loss_weight(s.loss_weight, distilled=s.distilled)  # SRPO's routing
        batch.samples.append(s)
    return batch
