"""The self-distillation term and its data hook: who gets a teacher, with which privileged text and weight.

One term serves OPSD, SSOPD and PAINT (and later relatives): each slot of `DistillCfg` picks a component.

    data hook (`distill_requests`, per step, on groups):
        prompt weight w(x)        none | frontier 4p(1-p) | indicator | beta | sqrt
        completions selected      all | longest_wrong (SSOPD) | entropy_mismatch (all; positions chosen in-loss)
        privileged text           reference_solution | shortest_correct | partial_solution
        weights / normaliser      prompt_mean (SSOPD) | token_mean (OPSD)
    loss term (`DistillTerm`, per micro-batch, on logits):
        PAINT interpolation       z_T <- (1-gamma) z_T + gamma sg(z_S) at entropy-mismatch positions
        per-token divergence      fkl | rkl | jsd(beta) on full / teacher-top-k / student-top-k+tail support,
                                  or the sampled-token reverse-KL estimator; optional clip and IS clip
        loss                      coef * sum_rows weight * sum_t D_t / (global normaliser)

Legend: D distilled rows of a micro-batch, T completion positions, V vocabulary.
"""

from __future__ import annotations

import math

import torch

from sposd.algos.base import Normalizer, PolicyBatch, TeacherRequest
from sposd.algos.config import DistillCfg
from sposd.ops.divergence import (
    entropy_mismatch_mask,
    interpolate_teacher_logits_,
    per_token_divergence,
    sampled_token_loss,
)
from sposd.ops.logprobs import entropy_from_logits, token_logprobs
from sposd.ops.selection import prefix_length, prompt_weight, select_longest_wrong
from sposd.ops.types import LossOut
from sposd.types import RolloutGroup


def _strip_thinking(text: str) -> str:
    from sposd.data.templates import strip_thinking

    return strip_thinking(text)


def _selected_count(n_positions: int, cfg: DistillCfg) -> int:
    """Positions that will carry loss: all n, or the entropy-mismatch share ceil(q n)."""
    if cfg.select != "entropy_mismatch" or n_positions == 0:
        return n_positions
    return min(n_positions, max(1, math.ceil(cfg.mismatch_q * n_positions - 1e-9)))


def distill_requests(
    groups: list[RolloutGroup], cfg: DistillCfg, *, cut_reference=None
) -> tuple[list[TeacherRequest | None], dict[str, float]]:
    """The teacher request of every completion (None = no teacher), flat in group order, and counters.

    Args:
        groups: verified groups.
        cfg: the distillation config.
        cut_reference: (completion_ids, solution) -> the partial reference (context "partial_solution").
    Returns: (requests, stats) with stats "distill/targets", "distill/groups", "distill/prompt_weight_sum",
        "distill/missing_solution".
    """
    out: list[TeacherRequest | None] = []
    stats = {
        "distill/targets": 0.0,
        "distill/groups": 0.0,
        "distill/prompt_weight_sum": 0.0,
        "distill/missing_solution": 0.0,
    }
    for g in groups:
        comps = g.completions
        reqs: list[TeacherRequest | None] = [None] * len(comps)
        w = prompt_weight(g.pass_rate, kind=cfg.prompt_weight, a=cfg.prompt_weight_a, b=cfg.prompt_weight_b)
        chosen: list[int] = []
        witness: int | None = None
        if w > 0 and comps:
            lengths = [len(c.token_ids) if cfg.length_unit == "tokens" else len(c.text) for c in comps]
            if cfg.select == "longest_wrong":
                sel = select_longest_wrong(
                    lengths,
                    [c.correct for c in comps],
                    [c.truncated for c in comps],
                    exclude_truncated=cfg.exclude_truncated_wrong,
                    num_wrong=cfg.num_wrong,
                )
                if sel is not None:
                    witness, chosen = sel
            elif cfg.context == "shortest_correct":
                correct = [i for i, c in enumerate(comps) if c.correct]
                if correct:
                    witness = min(correct, key=lambda i: (lengths[i], i))
                    chosen = [i for i in range(len(comps)) if i != witness]
            else:
                chosen = list(range(len(comps)))
        solution = g.prompt.solution
        if chosen and cfg.context in ("reference_solution", "partial_solution") and not solution:
            stats["distill/missing_solution"] += len(chosen)
            chosen = []
        counts: dict[int, tuple[str, int]] = {}
        for i in chosen:
            c = comps[i]
            if cfg.context == "shortest_correct":
                assert witness is not None
                text = comps[witness].text
                privileged = _strip_thinking(text) if cfg.witness_thinking == "strip" else text
            elif cfg.context == "partial_solution":
                assert cut_reference is not None, "context partial_solution needs cut_reference"
                privileged = cut_reference(c.token_ids, solution)
            else:
                privileged = solution
            n = prefix_length(
                len(c.token_ids),
                mode=cfg.prefix if cfg.select == "longest_wrong" else "all",
                witness_len=len(comps[witness].token_ids) if witness is not None else None,
                cap=cfg.prefix_cap,
            )
            if n > 0:
                counts[i] = (privileged, n)
        if counts:
            selected = {i: _selected_count(n, cfg) for i, (_, n) in counts.items()}
            total = sum(selected.values())
            for i, (privileged, n) in counts.items():
                if cfg.normalize == "prompt_mean":
                    reqs[i] = TeacherRequest(privileged, w / total, n, 1.0 / len(counts))
                else:
                    reqs[i] = TeacherRequest(privileged, w, n, float(selected[i]))
            stats["distill/targets"] += len(counts)
            stats["distill/groups"] += 1
            stats["distill/prompt_weight_sum"] += w
        out.extend(reqs)
    return out, stats


class DistillTerm:
    """coef x the self-distillation loss on the micro-batch's distilled rows (`PolicyBatch.distill`).

    Metrics (additive over micro-batches and ranks): "loss/distill" (the term before coef), "distill/tokens"
    (positions with loss), "distill/div_sum" (sum of D_t over them), "distill/interp_tokens".

    Args:
        cfg: the distillation config.
        temperature: the rollout temperature, used when cfg.loss_temperature is null.
    """

    needs_ref = False

    def __init__(self, cfg: DistillCfg, *, temperature: float = 1.0) -> None:
        self.cfg = cfg
        self.coef = cfg.coef
        self.temperature = cfg.loss_temperature or temperature

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        cfg, db = self.cfg, mb.distill
        if db is None:  # no distilled row here: keep the graph connected and the metric keys identical
            zero = mb.logp_BT.sum() * 0.0
            z = zero.detach()
            return LossOut(
                zero, {"loss/distill": z, "distill/tokens": z, "distill/div_sum": z, "distill/interp_tokens": z}
            )
        S_DTV, T_DTV, tau = db.student_logits_DTV, db.teacher_logits_DTV, self.temperature
        D, T = db.tokens_DT.shape
        pos_DT = torch.arange(T, device=db.lengths_D.device)[None, :] < db.lengths_D[:, None]
        n_interp = torch.zeros((), device=pos_DT.device)
        if cfg.interp_gamma > 0 or cfg.select == "entropy_mismatch":
            with torch.no_grad():
                h_t = entropy_from_logits(T_DTV, temperature=tau, chunk_tokens=cfg.chunk_tokens)
                h_s = entropy_from_logits(S_DTV.detach(), temperature=tau, chunk_tokens=cfg.chunk_tokens)
                em_DT = entropy_mismatch_mask(h_t, h_s, db.lengths_D, q=cfg.mismatch_q, sign=cfg.mismatch_sign)
            if cfg.interp_gamma > 0:
                interpolate_teacher_logits_(T_DTV, S_DTV, em_DT, gamma=cfg.interp_gamma)
                n_interp = em_DT.sum().float()
            if cfg.select == "entropy_mismatch":
                pos_DT = pos_DT & em_DT
        if cfg.sampled_token:
            ls_DT = token_logprobs(S_DTV, db.tokens_DT, temperature=tau, chunk_tokens=cfg.chunk_tokens)
            with torch.no_grad():
                lt_DT = token_logprobs(T_DTV, db.tokens_DT, temperature=tau, chunk_tokens=cfg.chunk_tokens)
            per_tok_DT = sampled_token_loss(ls_DT, lt_DT)
            div_DT = (lt_DT - ls_DT).detach().neg()  # log S - log T: the per-token reverse-KL sample
        else:
            per_tok_DT = per_token_divergence(
                S_DTV,
                T_DTV,
                kind=cfg.divergence,
                beta=cfg.beta,
                temperature=tau,
                support=cfg.support,
                topk=cfg.topk,
                lengths_B=db.lengths_D,
                chunk_tokens=cfg.chunk_tokens,
            )
            if cfg.clip_max is not None:
                per_tok_DT = per_tok_DT.clamp(max=cfg.clip_max)
            div_DT = per_tok_DT.detach()
        if cfg.is_clip is not None:
            ratio_DT = torch.exp((db.logp_DT - db.old_logp_DT).detach().clamp(-20.0, 20.0)).clamp(max=cfg.is_clip)
            per_tok_DT = per_tok_DT * ratio_DT
        w_DT = pos_DT.to(per_tok_DT.dtype) * db.weight_D[:, None].to(per_tok_DT.dtype)
        loss = (per_tok_DT * w_DT).sum() / max(norm.distill_units, 1e-12)
        with torch.no_grad():
            mask_DT = pos_DT.to(div_DT.dtype)
            metrics = {
                "loss/distill": loss.detach(),
                "distill/tokens": mask_DT.sum(),
                "distill/div_sum": (div_DT * mask_DT).sum(),
                "distill/interp_tokens": n_interp,
            }
        return LossOut(self.coef * loss.float(), metrics)
