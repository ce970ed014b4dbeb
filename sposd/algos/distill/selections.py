"""Token selections and token weightings of the distillation term (registered components).

A selection decides, per group, which completions get a teacher (`choose`) and, per position, which positions of
those completions receive the loss (`positions`, or a batch-wide pre-pass: TIP). A token weighting turns a pre-pass
statistic into per-token weights (SRPO's teacher entropy). Every `algo.distill.select` / `algo.distill.token_weight`
value is one class here, and no other code looks at the name.

Legend: G completions in one group, D distilled rows, T positions, V vocabulary, N positions, C statistics.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sposd.ops.selection import select_longest_minority, select_longest_wrong
from sposd.ops.token_selection import (
    entropy_token_weights,
    q3_mask,
    q3_thresholds,
    tip_num_kept,
    tip_select,
    tip_token_stats,
    tip_weights,
)


class Selection:
    """Base "all": every completion of a group with a prompt weight > 0, every position.

    Class attributes:
        compares_group: compares completions within a group (needs group_size >= 2).
        uses_prefix: `algo.distill.prefix` (all / cap / witness) limits the positions of a chosen completion.
        needs_mismatch: restricts positions to the entropy-mismatch set (the term computes it).
        needs_answer_classes: the loop must label `Completion.answer_class` (majority voting) first.
        prepass: the batch-wide token pre-pass this selection runs (TIP), else None.
    """

    compares_group = False
    uses_prefix = False
    needs_mismatch = False
    needs_answer_classes = False
    prepass: TokenPrepass | None = None

    def choose(self, view, cfg) -> list[int]:
        """Indices of the completions that get a teacher; may set `view.witness` (the group's witness)."""
        return list(range(len(view.comps)))

    def selected_count(self, n: int, cfg) -> int:
        """Positions of an n-position completion that count in the normaliser."""
        return n

    def positions(self, pos_DT: Tensor, mismatch_DT: Tensor | None) -> Tensor:
        """The positions that receive the loss, from the candidate positions (and the mismatch set)."""
        return pos_DT


class FailedOnly(Selection):
    """SRPO: only the wrong completions."""

    def choose(self, view, cfg) -> list[int]:
        return [i for i, ok in enumerate(view.correct) if not ok]


class LongestWrong(Selection):
    """SSOPD: the longest wrong completion of a mixed group (all of them with num_wrong all); its witness is the
    shortest correct one."""

    compares_group = True
    uses_prefix = True

    def choose(self, view, cfg) -> list[int]:
        sel = select_longest_wrong(
            view.lengths,
            view.correct,
            [c.truncated for c in view.comps],
            exclude_truncated=cfg.exclude_truncated_wrong,
            num_wrong=cfg.num_wrong,
        )
        if sel is None:
            return []
        view.witness = sel[0]
        return sel[1]


class LongestMinority(Selection):
    """U-OPSD: the longest completion disagreeing with the group's majority answer; its witness is the majority's
    shortest completion (no majority, or a unanimous group: none)."""

    compares_group = True
    uses_prefix = True
    needs_answer_classes = True

    def choose(self, view, cfg) -> list[int]:
        sel = select_longest_minority(view.lengths, [c.answer_class for c in view.comps], num_wrong=cfg.num_wrong)
        if sel is None:
            return []
        view.witness = sel[0]
        return sel[1]


class EntropyMismatch(Selection):
    """PAINT's sparse set only: per sequence the top ceil(q n) positions by entropy mismatch."""

    needs_mismatch = True

    def selected_count(self, n: int, cfg) -> int:
        return n if n == 0 else min(n, max(1, math.ceil(cfg.mismatch_q * n - 1e-9)))

    def positions(self, pos_DT: Tensor, mismatch_DT: Tensor | None) -> Tensor:
        assert mismatch_DT is not None, "select entropy_mismatch needs the mismatch set"
        return pos_DT & mismatch_DT


class TokenPrepass:
    """A batch-wide pre-pass over the distilled positions: statistics per position (`stats`, C columns, computed
    on [n, V] logit blocks), then per-token weights from every rank's statistics (`weights`)."""

    columns = 1

    def stats(self, S_NV: Tensor, T_NV: Tensor, term) -> Tensor:
        raise NotImplementedError

    def weights(self, flat: Tensor, glob: Tensor, all_ranks: list[Tensor], cfg) -> Tensor:
        raise NotImplementedError


class TipPrepass(TokenPrepass):
    """TIP: h = H(S)/ln|V|, j = JSD_0.5(S, T)/ln 2 per position; keep max(1, floor(ratio N)) positions drawn prop.
    to h^alpha j^gamma (optionally only in the Q3 region), weighted N / kept."""

    columns = 2

    def stats(self, S_NV: Tensor, T_NV: Tensor, term) -> Tensor:
        tip = term.cfg.tip
        h, j = tip_token_stats(
            S_NV,
            T_NV,
            temperature=term.temperature,
            jsd_topk=tip.jsd_topk,
            scale=tip.scale,
            chunk_tokens=term.cfg.chunk_tokens,
        )
        return torch.stack([h, j], -1)

    def weights(self, flat: Tensor, glob: Tensor, all_ranks: list[Tensor], cfg) -> Tensor:
        tip = cfg.tip
        h_max = j_min = None
        if tip.region == "q3":
            h_max, j_min = q3_thresholds(glob[:, 0], glob[:, 1], h_quantile=tip.h_quantile, j_quantile=tip.j_quantile)

        def candidates(x: Tensor) -> Tensor | None:
            return None if h_max is None else q3_mask(x[:, 0], x[:, 1], h_max=h_max, j_min=j_min)

        n_all = sum(x.shape[0] for x in all_ranks)
        k_all = sum(
            tip_num_kept(
                x.shape[0], ratio=tip.ratio, num_candidates=None if h_max is None else int(candidates(x).sum())
            )
            for x in all_ranks
        )
        if flat.shape[0] == 0:
            return flat[:, 0]
        keep = tip_select(
            tip_weights(flat[:, 0], flat[:, 1], alpha=tip.alpha, gamma=tip.gamma),
            ratio=tip.ratio,
            candidates_N=candidates(flat),
        )
        return keep.float() * (n_all / max(k_all, 1))


class TeacherEntropyPrepass(TokenPrepass):
    """SRPO: w_t = exp(-H(T_t) / tau), H on the divergence's support, mean 1 over every rank's distilled tokens."""

    def stats(self, S_NV: Tensor, T_NV: Tensor, term) -> Tensor:
        from sposd.ops.teacher_signal import teacher_support_entropy

        cfg = term.cfg
        support = {"student_topk": "student_topk_tail"}.get(cfg.support, cfg.support)  # sg_topk's K as a support
        H = teacher_support_entropy(
            S_NV[None], T_NV[None], support=support, topk=cfg.topk, temperature=term.temperature
        )
        return H[0][:, None]

    def weights(self, flat: Tensor, glob: Tensor, all_ranks: list[Tensor], cfg) -> Tensor:
        tau = cfg.token_weight_tau
        mean = float(entropy_token_weights(glob[:, 0], tau=tau).mean()) if glob.numel() else 1.0
        return entropy_token_weights(flat[:, 0], tau=tau) / max(mean, 1e-12)


class Tip(Selection):
    """TIP: every completion; positions sampled by the batch-wide pre-pass, and only their logits are computed (the
    learner hands hidden states and the output layer instead of dense logits)."""

    prepass = TipPrepass()


TOKEN_SELECTIONS: dict[str, type[Selection]] = {}
TOKEN_WEIGHTINGS: dict[str, TokenPrepass | None] = {"none": None, "teacher_entropy": TeacherEntropyPrepass()}


def register_selection(name: str, cls: type[Selection]) -> None:
    if name in TOKEN_SELECTIONS:
        raise ValueError(f"selection {name!r} already registered by {TOKEN_SELECTIONS[name].__name__}")
    TOKEN_SELECTIONS[name] = cls


for _name, _cls in (
    ("all", Selection),
    ("failed_only", FailedOnly),
    ("longest_wrong", LongestWrong),
    ("longest_minority", LongestMinority),
    ("entropy_mismatch", EntropyMismatch),
    ("tip", Tip),
):
    register_selection(_name, _cls)


def make_selection(name: str) -> Selection:
    """The registered selection `name` (algo.distill.select)."""
    if name not in TOKEN_SELECTIONS:
        raise ValueError(f"algo.distill.select={name!r} is not valid; choose from {sorted(TOKEN_SELECTIONS)}")
    return TOKEN_SELECTIONS[name]()


def make_token_weighting(name: str) -> TokenPrepass | None:
    """The registered token weighting `name` (algo.distill.token_weight); None for "none"."""
    if name not in TOKEN_WEIGHTINGS:
        raise ValueError(f"algo.distill.token_weight={name!r} is not valid; choose from {sorted(TOKEN_WEIGHTINGS)}")
    return TOKEN_WEIGHTINGS[name]
