"""The self-distillation term and its data hook: who gets a teacher, with which context and weight.

One term serves OPSD, SSOPD, PAINT, SDPO, SRPO, ATESD, TIP, Paced, OPSDC and SD-Zero: each slot of `DistillCfg`
picks a component.

    data hook (`distill_requests`, per step, on groups):
        prompt weight w(x)        none | frontier 4p(1-p) | indicator | beta p^a(1-p)^b | sqrt
                                  (+ batch_mean: normalised by the batch mean of w, Paced)
        completions selected      all | longest_wrong (SSOPD) | longest_minority (U-OPSD) | failed_only (SRPO) |
                                  entropy_mismatch, tip (all; positions chosen later)
        teacher context           reference_solution | shortest_correct | shortest_majority | partial_solution |
                                  exposure_prefix | successful_sibling | reviser | concise_instruction
                                  (+ PAINT's full-solution partner context)
        weights / normaliser      prompt_mean (SSOPD) | token_mean (OPSD)
    token pre-pass (`token_stats` / `token_weights`, in the learner before the loss passes, whole batch):
        tip                       keep max(1, floor(ratio N)) positions drawn prop. to h^alpha j^gamma (Q3 option)
        teacher_entropy           w_t = exp(-H(T_t) / tau), mean 1 over the batch's distilled tokens (SRPO)
    loss term (`DistillTerm`, per micro-batch, on logits):
        PAINT interpolation       z_T <- (1-gamma) z_T + gamma sg(z_P) at entropy-mismatch positions, z_P the
                                  student's or the full-solution teacher's logits
        per-token divergence      fkl | rkl | jsd(beta) on full / teacher-top-k / student-top-k+tail support,
                                  the sampled-token reverse-KL estimator, or the stop-gradient top-k reverse KL;
                                  optional token / element clip and IS clip; a two-stage schedule (Paced)
        loss                      coef * sum_rows weight * sum_t w_t D_t / (global normaliser)

With select=tip and no RL term the learner passes final hidden states instead of dense logits and the term
computes [N, V] logits only at the kept positions, so its memory falls with the retention ratio.

Legend: D distilled rows of a micro-batch, T completion positions, V vocabulary, N selected positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.algos.base import DistillBatch, Normalizer, PolicyBatch, TeacherContext, TeacherRequest
from sposd.algos.config import REFERENCE_CONTEXTS, DistillCfg
from sposd.algos.schedule import coef_at
from sposd.ops.divergence import (
    divergence_with_stats,
    entropy_mismatch_mask,
    interpolate_teacher_logits_,
    sampled_token_loss,
    sg_topk_reverse_kl,
    teacher_support_entropy,
)
from sposd.ops.logprobs import entropy_from_logits, token_logprobs
from sposd.ops.repetition import ends_in_loop
from sposd.ops.selection import prefix_length, prompt_weight, select_longest_minority, select_longest_wrong
from sposd.ops.token_selection import (
    entropy_token_weights,
    q3_mask,
    q3_thresholds,
    tip_num_kept,
    tip_select,
    tip_token_stats,
    tip_weights,
)
from sposd.ops.types import LossOut
from sposd.types import RolloutGroup

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


def _strip_thinking(text: str) -> str:
    from sposd.data.templates import strip_thinking

    return strip_thinking(text)


def _selected_count(n_positions: int, cfg: DistillCfg) -> int:
    """Positions that count in the normaliser: all n, or the entropy-mismatch share ceil(q n). (TIP counts all n:
    its kept positions are reweighted by N / kept, which makes the token mean one over kept positions.)"""
    if cfg.select != "entropy_mismatch" or n_positions == 0:
        return n_positions
    return min(n_positions, max(1, math.ceil(cfg.mismatch_q * n_positions - 1e-9)))


def _first_correct_sibling(correct: list[bool], i: int) -> int | None:
    """SDPO's demonstration for sample i: the first correct completion of the group other than i itself."""
    return next((j for j, ok in enumerate(correct) if ok and j != i), None)


def distill_requests(
    groups: list[RolloutGroup], cfg: DistillCfg, *, cut_reference=None, exposure_ratio: float | None = None
) -> tuple[list[TeacherRequest | None], dict[str, float]]:
    """The teacher request of every completion (None = no teacher), flat in group order, and counters.

    Args:
        groups: verified groups.
        cfg: the distillation config.
        cut_reference: (completion_ids, solution[, rho]) -> the reference with its suffix dropped: by overlap
            (context "partial_solution"), or revealing the first ceil(rho n) tokens ("exposure_prefix").
        exposure_ratio: rho of context "exposure_prefix" (the exposure controller's current draw).
    Returns: (requests, stats) with stats "distill/targets", "distill/groups", "distill/prompt_weight_sum",
        "distill/missing_solution", "distill/loop_completions" (completions ending in a repetition loop, the failure
        the element clip is reported to cause) and "distill/completions".
    """
    out: list[TeacherRequest | None] = []
    stats = {
        "distill/targets": 0.0,
        "distill/groups": 0.0,
        "distill/prompt_weight_sum": 0.0,
        "distill/missing_solution": 0.0,
        "distill/loop_completions": float(sum(ends_in_loop(c.token_ids) for g in groups for c in g.completions)),
        "distill/completions": float(sum(len(g.completions) for g in groups)),
    }
    partner = (
        cfg.interp_gamma > 0
        and cfg.interp_partner == "full_solution_teacher"
        and cfg.context
        in (
            "partial_solution",
            "exposure_prefix",
        )
    )
    for g in groups:
        comps = g.completions
        correct = [c.correct for c in comps]
        reqs: list[TeacherRequest | None] = [None] * len(comps)
        w = prompt_weight(g.pass_rate, kind=cfg.prompt_weight, a=cfg.prompt_weight_a, b=cfg.prompt_weight_b)
        chosen: list[int] = []
        witness: int | None = None  # the group's witness (SSOPD)
        sibling: dict[int, int] = {}  # each sample's demonstration (SDPO / SRPO)
        if w > 0 and comps:
            lengths = [len(c.token_ids) if cfg.length_unit == "tokens" else len(c.text) for c in comps]
            eligible = [i for i in range(len(comps)) if cfg.select != "failed_only" or not correct[i]]
            if cfg.select == "longest_wrong":
                sel = select_longest_wrong(
                    lengths,
                    correct,
                    [c.truncated for c in comps],
                    exclude_truncated=cfg.exclude_truncated_wrong,
                    num_wrong=cfg.num_wrong,
                )
                if sel is not None:
                    witness, chosen = sel
            elif cfg.select == "longest_minority":
                sel = select_longest_minority(lengths, [c.answer_class for c in comps], num_wrong=cfg.num_wrong)
                if sel is not None:
                    witness, chosen = sel
            elif cfg.context == "shortest_correct":
                right = [i for i in range(len(comps)) if correct[i]]
                if right:
                    witness = min(right, key=lambda i: (lengths[i], i))
                    chosen = [i for i in eligible if i != witness]
            elif cfg.context == "successful_sibling":
                for i in eligible:
                    j = _first_correct_sibling(correct, i)
                    if j is not None:
                        sibling[i] = j
                        chosen.append(i)
            else:
                chosen = eligible
        solution = g.prompt.solution
        if chosen and cfg.context in REFERENCE_CONTEXTS and not solution:
            stats["distill/missing_solution"] += len(chosen)
            chosen = []
        counts: dict[int, tuple[TeacherContext, int]] = {}
        for i in chosen:
            c = comps[i]
            if cfg.context in ("shortest_correct", "shortest_majority", "successful_sibling"):
                text = comps[sibling[i] if cfg.context == "successful_sibling" else witness].text
                ctx = TeacherContext("wrap", _strip_thinking(text) if cfg.witness_thinking == "strip" else text)
            elif cfg.context == "partial_solution":
                assert cut_reference is not None, "context partial_solution needs cut_reference"
                ctx = TeacherContext("wrap", cut_reference(c.token_ids, solution))
            elif cfg.context == "exposure_prefix":
                assert cut_reference is not None and exposure_ratio is not None, "exposure_prefix needs rho and a cut"
                ctx = TeacherContext("wrap", cut_reference(c.token_ids, solution, exposure_ratio))
            elif cfg.context == "reviser":
                ctx = TeacherContext("reviser", c.text, verdict=bool(c.correct))
            elif cfg.context == "concise_instruction":
                ctx = TeacherContext("concise", "")
            else:
                ctx = TeacherContext("wrap", solution)
            n = prefix_length(
                len(c.token_ids),
                mode=cfg.prefix if cfg.select in ("longest_wrong", "longest_minority") else "all",
                witness_len=len(comps[witness].token_ids) if witness is not None else None,
                cap=cfg.prefix_cap,
            )
            if n > 0:
                counts[i] = (ctx, n)
        if counts:
            selected = {i: _selected_count(n, cfg) for i, (_, n) in counts.items()}
            total = sum(selected.values())
            scale = w if cfg.prompt_weight_norm == "batch_mean" else 1.0  # units prop. to w: sum w L / sum w
            partner_ctx = TeacherContext("wrap", solution) if partner else None
            for i, (ctx, n) in counts.items():
                if cfg.normalize == "prompt_mean":
                    reqs[i] = TeacherRequest(ctx, w / total, n, scale / len(counts), partner=partner_ctx)
                else:
                    reqs[i] = TeacherRequest(ctx, w, n, scale * selected[i], partner=partner_ctx)
            stats["distill/targets"] += len(counts)
            stats["distill/groups"] += 1
            stats["distill/prompt_weight_sum"] += w
        out.extend(reqs)
    return out, stats


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
        self.needs_token_prepass = cfg.select == "tip" or cfg.token_weight != "none"
        self.sparse = cfg.select == "tip"  # needs logits at the kept positions only

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
        """Per distilled row, the statistics its token weights need: TIP [n, 2] = (h, j); teacher_entropy [n, 1]
        = H(T) on the divergence's support. Computed in [chunk, V] blocks of positions."""
        cfg, tau = self.cfg, self.temperature
        D, T = db.tokens_DT.shape
        lengths = [min(max(int(n), 0), T) for n in db.lengths_D.tolist()]
        pos_DT = torch.arange(T, device=db.lengths_D.device)[None, :] < db.lengths_D[:, None]
        rows, cols = pos_DT.nonzero(as_tuple=True)  # row-major: row b's positions 0..lengths[b]-1 in order
        parts = []
        for s in range(0, rows.numel(), cfg.chunk_tokens):
            r, c = rows[s : s + cfg.chunk_tokens], cols[s : s + cfg.chunk_tokens]
            S_NV, T_NV = db.student_logits_at(r, c).detach(), db.teacher_logits_at(r, c)
            if cfg.select == "tip":
                h, j = tip_token_stats(
                    S_NV, T_NV, temperature=tau, jsd_topk=cfg.tip.jsd_topk, scale=cfg.tip.scale, chunk_tokens=len(r)
                )
                parts.append(torch.stack([h, j], -1))
            else:
                H = teacher_support_entropy(
                    S_NV[None], T_NV[None], support=self._entropy_support(), topk=cfg.topk, temperature=tau
                )[0]
                parts.append(H[:, None])
        flat = torch.cat(parts) if parts else torch.zeros(0, 2 if cfg.select == "tip" else 1)
        return list(flat.float().cpu().split(lengths))

    def _entropy_support(self) -> str:
        """SRPO's teacher entropy is taken on the support of the loss (sg_topk's K: the teacher's renormalised
        top-k for teacher_topk, the student's top-k + tail for student_topk)."""
        return {"student_topk": "student_topk_tail"}.get(self.cfg.support, self.cfg.support)

    def token_weights(self, local: list[Tensor], everyone: list[list[Tensor]]) -> list[Tensor]:
        """Per-token weights of this rank's distilled rows, mean 1 over every rank's distilled tokens.

        TIP: kept positions get N / K (N candidate positions, K kept, both over all ranks), the rest 0; thresholds
        of the Q3 rule are quantiles over all ranks' positions, the draw is per rank. teacher_entropy:
        exp(-H / tau) divided by its mean over all ranks' tokens.
        """
        cfg = self.cfg
        cols = 2 if cfg.select == "tip" else 1
        lengths = [x.shape[0] for x in local]
        flat = torch.cat(local) if local else torch.zeros(0, cols)
        all_ranks = [torch.cat(r) if r else torch.zeros(0, cols) for r in everyone]
        glob = torch.cat(all_ranks) if all_ranks else flat
        if cfg.select != "tip":
            tau = cfg.token_weight_tau
            mean = float(entropy_token_weights(glob[:, 0], tau=tau).mean()) if glob.numel() else 1.0
            return list((entropy_token_weights(flat[:, 0], tau=tau) / max(mean, 1e-12)).split(lengths))
        h_max = j_min = None
        if cfg.tip.region == "q3":
            h_max, j_min = q3_thresholds(
                glob[:, 0], glob[:, 1], h_quantile=cfg.tip.h_quantile, j_quantile=cfg.tip.j_quantile
            )

        def candidates(x: Tensor) -> Tensor | None:
            return None if h_max is None else q3_mask(x[:, 0], x[:, 1], h_max=h_max, j_min=j_min)

        n_all = sum(x.shape[0] for x in all_ranks)
        k_all = sum(
            tip_num_kept(
                x.shape[0], ratio=cfg.tip.ratio, num_candidates=None if h_max is None else int(candidates(x).sum())
            )
            for x in all_ranks
        )
        if flat.shape[0] == 0:
            return [flat[:, 0] for _ in local]
        keep = tip_select(
            tip_weights(flat[:, 0], flat[:, 1], alpha=cfg.tip.alpha, gamma=cfg.tip.gamma),
            ratio=cfg.tip.ratio,
            candidates_N=candidates(flat),
        )
        return list((keep.float() * (n_all / max(k_all, 1))).split(lengths))

    # ---- loss --------------------------------------------------------------------------------------------
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
        if cfg.select == "tip":
            return self._kept_positions_loss(db, pos_DT, n_positions, norm)
        S_DTV, T_DTV, tau = db.student_logits_DTV, db.teacher_logits_DTV, self.temperature
        assert S_DTV is not None and T_DTV is not None, "dense distillation needs student and teacher logits"
        n_interp = torch.zeros((), device=pos_DT.device)
        if cfg.interp_gamma > 0 or cfg.select == "entropy_mismatch":
            with torch.no_grad():
                h_t = entropy_from_logits(T_DTV, temperature=tau, chunk_tokens=cfg.chunk_tokens)
                h_s = entropy_from_logits(S_DTV.detach(), temperature=tau, chunk_tokens=cfg.chunk_tokens)
                em_DT = entropy_mismatch_mask(h_t, h_s, db.lengths_D, q=cfg.mismatch_q, sign=cfg.mismatch_sign)
            if cfg.interp_gamma > 0:
                partner = S_DTV if cfg.interp_partner == "student" else db.partner_logits_DTV
                assert partner is not None, "interp_partner=full_solution_teacher needs DistillBatch.partner_logits_DTV"
                interpolate_teacher_logits_(T_DTV, partner, em_DT, gamma=cfg.interp_gamma)
                n_interp = em_DT.sum().float()
            if cfg.select == "entropy_mismatch":
                pos_DT = pos_DT & em_DT
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
        """TIP: the divergence on the N kept positions only, as one [1, N, V] row (logits, their chunked work and
        their gradient exist at those positions alone)."""
        assert db.token_weight_DT is not None, "select=tip needs the learner's token pre-pass (Algorithm.token_weights)"
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
