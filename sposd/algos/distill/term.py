"""The self-distillation loss term (`DistillTerm`), one for every method: the components it composes are the
configured selection / token weighting (selections.py) and the divergence's knobs.

    token pre-pass (`token_stats` / `token_weights`, in the learner before the loss passes, whole batch): the
        selection's (TIP) or the token weighting's (SRPO's teacher entropy) `TokenPrepass`
    loss (per micro-batch, on logits):
        PAINT interpolation       z_T <- (1-gamma) z_T + gamma sg(z_P) at entropy-mismatch positions, z_P the
                                  student's or the full-solution teacher's logits
        per-token divergence      fkl | rkl | jsd(beta) on full / teacher-top-k / student-top-k+tail support,
                                  the sampled-token reverse-KL estimator, or the stop-gradient top-k reverse KL;
                                  optional token / element clip and IS clip; a two-stage schedule (Paced)
        loss                      coef * sum_rows weight * sum_t w_t D_t / (global normaliser)

With a sparse selection (TIP) and no RL term the learner passes final hidden states instead of dense logits and the
term computes [N, V] logits only at the kept positions, so its memory falls with the retention ratio.

Legend: D distilled rows of a micro-batch, T completion positions, V vocabulary, N selected positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.algos.batch import DistillBatch, Normalizer, PolicyBatch
from sposd.algos.config import DistillCfg
from sposd.algos.distill.selections import make_selection, make_token_weighting
from sposd.algos.schedule import coef_at
from sposd.ops.divergence import divergence_with_stats
from sposd.ops.logprobs import entropy_from_logits, token_logprobs
from sposd.ops.teacher_signal import (
    entropy_mismatch_mask,
    interpolate_teacher_logits_,
    sampled_token_loss,
    sg_topk_reverse_kl,
)
from sposd.ops.types import LossOut

# sums over micro-batches and ranks; the loop logs each "distill/<x>_sum" also as "distill/<x>_mean" per distilled
# token: clipped_tokens_mean = the fraction of distilled tokens the clip changed, clipped_mean = clipped vocabulary
# entries per token (element clip), teacher_entropy_mean / student_entropy_mean at the distilled positions
STAT_METRICS = (
    "distill/clipped_sum",
    "distill/clipped_tokens_sum",
    "distill/teacher_entropy_sum",
    "distill/student_entropy_sum",
)
METRIC_KEYS = (
    "loss/distill",
    "distill/tokens",
    "distill/positions",
    "distill/div_sum",
    "distill/interp_tokens",
    *STAT_METRICS,
)


class DistillTerm:
    """coef x the self-distillation loss on the micro-batch's distilled rows (`PolicyBatch.distill`).

    Metrics (additive over micro-batches and ranks): "loss/distill" (the term before coef), "distill/tokens"
    (positions with loss), "distill/positions" (candidate positions before TIP / entropy-mismatch selection),
    "distill/div_sum" (sum of D_t over the positions with loss), "distill/interp_tokens".

    Args:
        cfg: the distillation config.
        temperature: the rollout temperature, used when cfg.loss_temperature is null.
    """

    needs_ref = False

    def __init__(self, cfg: DistillCfg, *, temperature: float = 1.0) -> None:
        self.cfg = cfg
        self.coef = cfg.coef
        self.divergence = cfg.divergence
        self.temperature = cfg.loss_temperature or temperature
        self.selection = make_selection(cfg.select)
        self.prepass = self.selection.prepass or make_token_weighting(cfg.token_weight)
        self.needs_token_prepass = self.prepass is not None
        self.sparse = self.selection.prepass is not None  # needs logits at the kept positions only

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        """The scheduled coefficient and, for a two-stage schedule, the divergence of this (1-based) step."""
        d = self.cfg
        self.coef = coef_at(
            step,
            total_steps,
            base=d.coef,
            schedule=d.coef_schedule,
            warmup_steps=d.coef_warmup_steps,
            final_ratio=d.coef_final_ratio,
        )
        out = {"distill/coef": self.coef}
        if d.divergence_after is not None:
            second = step > math.ceil(d.divergence_switch_frac * total_steps)
            self.divergence = d.divergence_after if second else d.divergence
            out["distill/divergence_stage"] = 2.0 if second else 1.0
        return out

    # ---- token pre-pass -------------------------------------------------------------------------------
    @torch.no_grad()
    def token_stats(self, db: DistillBatch) -> list[Tensor]:
        """Per distilled row, the pre-pass statistics its token weights need ([n, C] per row), computed in
        [chunk, V] blocks of positions (TIP: C = 2, (h, j); teacher entropy: C = 1, H(T) on the loss's support)."""
        cfg, prepass = self.cfg, self.prepass
        assert prepass is not None, "token_stats without a token pre-pass"
        D, T = db.tokens_DT.shape
        lengths = [min(max(int(n), 0), T) for n in db.lengths_D.tolist()]
        pos_DT = torch.arange(T, device=db.lengths_D.device)[None, :] < db.lengths_D[:, None]
        rows, cols = pos_DT.nonzero(as_tuple=True)  # row-major: row b's positions 0..lengths[b]-1 in order
        parts = []
        for s in range(0, rows.numel(), cfg.chunk_tokens):
            r, c = rows[s : s + cfg.chunk_tokens], cols[s : s + cfg.chunk_tokens]
            parts.append(prepass.stats(db.student_logits_at(r, c).detach(), db.teacher_logits_at(r, c), self))
        flat = torch.cat(parts) if parts else torch.zeros(0, prepass.columns)
        return list(flat.float().cpu().split(lengths))

    def token_weights(self, local: list[Tensor], everyone: list[list[Tensor]]) -> list[Tensor]:
        """Per-token weights of this rank's distilled rows from this rank's and every rank's statistics (TIP: kept
        positions N / K over all ranks, the rest 0, the draw per rank; teacher entropy: mean 1 over all ranks)."""
        prepass = self.prepass
        assert prepass is not None, "token_weights without a token pre-pass"
        lengths = [x.shape[0] for x in local]
        flat = torch.cat(local) if local else torch.zeros(0, prepass.columns)
        all_ranks = [torch.cat(r) if r else torch.zeros(0, prepass.columns) for r in everyone]
        glob = torch.cat(all_ranks) if all_ranks else flat
        return list(prepass.weights(flat, glob, all_ranks, self.cfg).split(lengths))

    # ---- loss --------------------------------------------------------------------------------------------
    def per_token(self, S, T_, tokens, lengths, logp, old_logp) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The loss's per-position values (`_per_token`), for diagnostics that show exactly them (`sposd inspect`)."""
        return self._per_token(S, T_, tokens, lengths, logp, old_logp)

    def _per_token(self, S, T_, tokens, lengths, logp, old_logp) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(loss_BT, div_BT, stats) of the configured divergence on [B, T, V] logits (any layout), clip and IS clip
        included; stats: the per-position STAT_KEYS of `divergence_with_stats` (no grad)."""
        cfg, tau = self.cfg, self.temperature
        stats: dict[str, Tensor] = {}
        if cfg.sampled_token or self.divergence == "sg_topk_rkl":
            if cfg.sampled_token:
                ls = token_logprobs(S, tokens, temperature=tau, chunk_tokens=cfg.chunk_tokens)
                with torch.no_grad():
                    lt = token_logprobs(T_, tokens, temperature=tau, chunk_tokens=cfg.chunk_tokens)
                per_tok, div = sampled_token_loss(ls, lt), (ls - lt).detach()  # log S - log T: a reverse-KL sample
            else:
                per_tok, div = sg_topk_reverse_kl(
                    S,
                    T_,
                    topk=cfg.topk,
                    index_from="student" if cfg.support == "student_topk" else "teacher",
                    temperature=tau,
                    lengths_B=lengths,
                    chunk_tokens=cfg.chunk_tokens,
                )
            clipped = torch.zeros_like(div)
            if cfg.clip_max is not None:  # token mode (the config refuses an element clip here)
                clipped = (per_tok.detach() > cfg.clip_max).to(div.dtype)
                per_tok = per_tok.clamp(max=cfg.clip_max)
            with torch.no_grad():
                stats = {
                    "clipped": clipped,
                    "teacher_entropy": entropy_from_logits(T_, temperature=tau, chunk_tokens=cfg.chunk_tokens),
                    "student_entropy": entropy_from_logits(S.detach(), temperature=tau, chunk_tokens=cfg.chunk_tokens),
                }
        else:
            per_tok, stats = divergence_with_stats(
                S,
                T_,
                kind=self.divergence,
                beta=cfg.beta,
                temperature=tau,
                support=cfg.support,
                topk=cfg.topk,
                lengths_B=lengths,
                chunk_tokens=cfg.chunk_tokens,
                clip=cfg.clip_max,
                clip_mode=cfg.clip_mode,
            )
            div = per_tok.detach()
        if cfg.is_clip is not None:
            ratio = torch.exp((logp - old_logp).detach().clamp(-20.0, 20.0)).clamp(max=cfg.is_clip)
            per_tok = per_tok * ratio
        return per_tok, div, stats

    @staticmethod
    def _stat_metrics(stats: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Sums over the positions with loss of the divergence's per-position statistics (STAT_METRICS)."""
        m = mask.to(torch.float32)
        clipped = stats["clipped"].float()
        return {
            "distill/clipped_sum": (clipped * m).sum(),
            "distill/clipped_tokens_sum": ((clipped > 0).float() * m).sum(),
            "distill/teacher_entropy_sum": (stats["teacher_entropy"].float() * m).sum(),
            "distill/student_entropy_sum": (stats["student_entropy"].float() * m).sum(),
        }

    def _zero(self, mb: PolicyBatch) -> LossOut:
        """No distilled row here: keep the graph connected and the metric keys identical."""
        zero = mb.logp_BT.sum() * 0.0
        return LossOut(zero, dict.fromkeys(METRIC_KEYS, zero.detach()))

    def __call__(self, mb: PolicyBatch, norm: Normalizer) -> LossOut:
        cfg, db = self.cfg, mb.distill
        if db is None:
            return self._zero(mb)
        D, T = db.tokens_DT.shape
        pos_DT = torch.arange(T, device=db.lengths_D.device)[None, :] < db.lengths_D[:, None]
        n_positions = pos_DT.sum().float()
        if self.sparse:
            return self._kept_positions_loss(db, pos_DT, n_positions, norm)
        S_DTV, T_DTV, tau = db.student_logits_DTV, db.teacher_logits_DTV, self.temperature
        assert S_DTV is not None and T_DTV is not None, "dense distillation needs student and teacher logits"
        n_interp = torch.zeros((), device=pos_DT.device)
        em_DT = None
        if cfg.interp_gamma > 0 or self.selection.needs_mismatch:
            with torch.no_grad():
                h_t = entropy_from_logits(T_DTV, temperature=tau, chunk_tokens=cfg.chunk_tokens)
                h_s = entropy_from_logits(S_DTV.detach(), temperature=tau, chunk_tokens=cfg.chunk_tokens)
                em_DT = entropy_mismatch_mask(h_t, h_s, db.lengths_D, q=cfg.mismatch_q, sign=cfg.mismatch_sign)
            if cfg.interp_gamma > 0:
                partner = S_DTV if cfg.interp_partner == "student" else db.partner_logits_DTV
                assert partner is not None, "interp_partner=full_solution_teacher needs DistillBatch.partner_logits_DTV"
                interpolate_teacher_logits_(T_DTV, partner, em_DT, gamma=cfg.interp_gamma)
                n_interp = em_DT.sum().float()
        pos_DT = self.selection.positions(pos_DT, em_DT)
        per_tok_DT, div_DT, stats = self._per_token(
            S_DTV, T_DTV, db.tokens_DT, db.lengths_D, db.logp_DT, db.old_logp_DT
        )
        w_DT = pos_DT.to(per_tok_DT.dtype) * db.weight_D[:, None].to(per_tok_DT.dtype)
        if db.token_weight_DT is not None:
            w_DT = w_DT * db.token_weight_DT.to(w_DT.dtype)
        loss = (per_tok_DT * w_DT).sum() / max(norm.distill_units, 1e-12)
        with torch.no_grad():
            mask_DT = pos_DT.to(div_DT.dtype)
            metrics = {
                "loss/distill": loss.detach(),
                "distill/tokens": mask_DT.sum(),
                "distill/positions": n_positions,
                "distill/div_sum": (div_DT * mask_DT).sum(),
                "distill/interp_tokens": n_interp,
                **self._stat_metrics(stats, pos_DT),
            }
        return LossOut(self.coef * loss.float(), metrics)

    def _kept_positions_loss(self, db: DistillBatch, pos_DT: Tensor, n_positions: Tensor, norm: Normalizer) -> LossOut:
        """A sparse selection (TIP): the divergence on the N kept positions only, as one [1, N, V] row (logits, their
        chunked work and their gradient exist at those positions alone)."""
        assert db.token_weight_DT is not None, "a sparse selection needs the learner's token pre-pass (token_weights)"
        keep_DT = pos_DT & (db.token_weight_DT > 0)
        rows, cols = keep_DT.nonzero(as_tuple=True)
        S_1NV = db.student_logits_at(rows, cols)[None]
        T_1NV = db.teacher_logits_at(rows, cols)[None]
        n = torch.tensor([rows.numel()], device=rows.device)
        per_tok_1N, div_1N, stats = self._per_token(
            S_1NV,
            T_1NV,
            db.tokens_DT[rows, cols][None],
            n,
            db.logp_DT[rows, cols][None],
            db.old_logp_DT[rows, cols][None],
        )
        w_N = db.token_weight_DT[rows, cols].to(per_tok_1N.dtype) * db.weight_D[rows].to(per_tok_1N.dtype)
        loss = (per_tok_1N[0] * w_N).sum() / max(norm.distill_units, 1e-12)
        with torch.no_grad():
            metrics = {
                "loss/distill": loss.detach(),
                "distill/tokens": torch.tensor(float(rows.numel()), device=rows.device),
                "distill/positions": n_positions,
                "distill/div_sum": div_1N.sum(),
                "distill/interp_tokens": torch.zeros((), device=rows.device),
                **self._stat_metrics(stats, torch.ones_like(div_1N)),
            }
        return LossOut(self.coef * loss.float(), metrics)
