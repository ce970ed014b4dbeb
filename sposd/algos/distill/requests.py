"""The distillation data hook: per group, who gets a teacher, with which context, weight and normaliser share.

prompt weight w(x)   none | frontier 4p(1-p) | indicator | beta p^a(1-p)^b | sqrt (+ batch_mean, Paced)
selection            `algo.distill.select` (selections.py): which completions, and the group's witness
context              `algo.distill.context` (contexts.py): what each chosen completion's teacher reads
weights / units      prompt_mean (SSOPD) | token_mean (OPSD)
"""

from __future__ import annotations

from sposd.algos.batch import TeacherRequest
from sposd.algos.config import DistillCfg
from sposd.algos.distill.contexts import GroupView, RenderArgs, TeacherContext, make_context
from sposd.algos.distill.selections import make_selection
from sposd.ops.repetition import ends_in_loop
from sposd.ops.selection import prefix_length, prompt_weight
from sposd.types import RolloutGroup


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
    context, selection = make_context(cfg.context), make_selection(cfg.select)
    args = RenderArgs(cut_reference, exposure_ratio, strip_witness_thinking=cfg.witness_thinking == "strip")
    partner = cfg.interp_gamma > 0 and cfg.interp_partner == "full_solution_teacher" and context.cuts_reference
    out: list[TeacherRequest | None] = []
    stats = {
        "distill/targets": 0.0,
        "distill/groups": 0.0,
        "distill/prompt_weight_sum": 0.0,
        "distill/missing_solution": 0.0,
        "distill/loop_completions": float(sum(ends_in_loop(c.token_ids) for g in groups for c in g.completions)),
        "distill/completions": float(sum(len(g.completions) for g in groups)),
    }
    for g in groups:
        comps = g.completions
        reqs: list[TeacherRequest | None] = [None] * len(comps)
        w = prompt_weight(g.pass_rate, kind=cfg.prompt_weight, a=cfg.prompt_weight_a, b=cfg.prompt_weight_b)
        view = GroupView(g, [len(c.token_ids) if cfg.length_unit == "tokens" else len(c.text) for c in comps])
        sources = context.sources(selection.choose(view, cfg), view) if w > 0 and comps else []
        solution = g.prompt.solution
        if sources and context.needs_solution and not solution:
            stats["distill/missing_solution"] += len(sources)
            sources = []
        counts: dict[int, tuple[TeacherContext, int]] = {}
        for i, src in sources:
            n = prefix_length(
                len(comps[i].token_ids),
                mode=cfg.prefix if selection.uses_prefix else "all",
                witness_len=len(comps[view.witness].token_ids) if view.witness is not None else None,
                cap=cfg.prefix_cap,
            )
            if n > 0:
                counts[i] = (context.render(i, src, view, args), n)
        if counts:
            selected = {i: selection.selected_count(n, cfg) for i, (_, n) in counts.items()}
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
