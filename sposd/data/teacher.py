"""Rendering teacher contexts: the privileged message around a reference / witness / partial reference, SD-Zero's
reviser prompt, OPSDC's concise instruction, or CEPO's answer spliced after the student's prompt.

The teacher sequence is [these ids][the student's completion ids] with nothing in between (spec 0.3); the
learner appends the completion.
"""

from __future__ import annotations

from sposd.data.templates import (
    OPEN_THINK,
    build_concise_message,
    build_reviser_message,
    build_teacher_message,
    render_prompt_ids,
    truncate_reference,
)
from sposd.ops.overlap import anchor_recall, overlap, reveal_ratio


def fits_positions(context_len: int, completion_len: int, max_positions: int | None) -> bool:
    """Whether the teacher sequence [context | completion] stays within the model's positions (None: unknown)."""
    return max_positions is None or context_len + completion_len <= max_positions


class TeacherPrompts:
    """Turns (problem, privileged text) into teacher context ids, and cuts references for PAINT.

    Args:
        tokenizer: the policy's tokenizer (chat template).
        instruction: the same instruction the student sees.
        enable_thinking: chat-template thinking flag of the teacher context.
        open_think: append "<think>\n" to every teacher context (a thinking teacher scoring a non-thinking student).
        wrapper: "opsd" | "sdpo" teacher message.
        max_len: teacher contexts longer than this are refused (`render` returns None).
        max_positions: the model's context (max_position_embeddings): a teacher sequence [context | completion]
            longer than this is refused too (the model would run past the positions it was trained on), and
            counted in `past_positions`.
        reveal_min, reveal_direction, overlap_metric, reveal_unit, hidden_marker: PAINT's partial solution
            ("anchor_recall" is measured on the decoded rollout text against the solution's anchors).
    """

    def __init__(
        self,
        tokenizer,
        *,
        instruction: str,
        enable_thinking: bool,
        open_think: bool = False,
        wrapper: str = "opsd",
        max_len: int | None = None,
        max_positions: int | None = None,
        reveal_min: float = 0.25,
        reveal_direction: str = "more_when_far",
        overlap_metric: str = "anchor_recall",
        reveal_unit: str = "tokens",
        hidden_marker: bool = False,
    ) -> None:
        self.tokenizer, self.instruction, self.enable_thinking = tokenizer, instruction, enable_thinking
        self.wrapper, self.max_len, self.max_positions = wrapper, max_len, max_positions
        self.past_positions = 0  # teacher sequences refused for running past max_positions (cumulative)
        self._suffix = list(tokenizer.encode(OPEN_THINK, add_special_tokens=False)) if open_think else []
        self.reveal_min, self.reveal_direction = reveal_min, reveal_direction
        self.overlap_metric, self.reveal_unit, self.hidden_marker = overlap_metric, reveal_unit, hidden_marker
        self._ref_ids: dict[str, list[int]] = {}
        self.last_rho: list[float] = []

    def render(self, problem: str, privileged: str) -> list[int] | None:
        """Teacher context ids (chat template, generation prompt added), or None when longer than max_len."""
        msg = build_teacher_message(problem, privileged, wrapper=self.wrapper, instruction=self.instruction)
        return self._message_ids(msg)

    def _message_ids(self, msg: str) -> list[int] | None:
        ids = render_prompt_ids(self.tokenizer, msg, enable_thinking=self.enable_thinking) + self._suffix
        return None if self.max_len is not None and len(ids) > self.max_len else ids

    def render_context(self, prompt, context, *, completion_len: int = 0) -> list[int] | None:
        """Teacher context ids for one `sposd.algos.base.TeacherContext`, or None when longer than max_len or when
        the context and the `completion_len` tokens after it do not fit in max_positions.

        Args:
            prompt: the student's `sposd.types.Prompt` (its problem text and prompt ids).
            context: kind "wrap" (the configured wrapper around context.text), "reviser" (the reviser prompt around
                the attempt context.text and its verdict), "concise" (OPSDC's instruction around the problem),
                "splice" (the student's prompt ids, assistant header included, then the tokens of context.text).
            completion_len: tokens of the completion the teacher pass appends to the context.
        """
        ids = self._context_ids(prompt, context)
        if ids is not None and not fits_positions(len(ids), completion_len, self.max_positions):
            self.past_positions += 1
            return None
        return ids

    def _context_ids(self, prompt, context) -> list[int] | None:
        if context.kind == "wrap":
            return self.render(prompt.problem, context.text)
        if context.kind == "reviser":
            return self._message_ids(build_reviser_message(prompt.problem, context.text, correct=bool(context.verdict)))
        if context.kind == "concise":
            return self._message_ids(build_concise_message(prompt.problem))
        if context.kind == "splice":
            ids = list(prompt.prompt_ids) + list(self.tokenizer.encode(context.text, add_special_tokens=False))
            return None if self.max_len is not None and len(ids) > self.max_len else ids
        raise ValueError(f"unknown teacher context kind {context.kind!r}")

    def cut_reference(self, completion_ids: list[int], solution: str, rho: float | None = None) -> str:
        """The reference with its suffix dropped: PAINT reveals rho = f(overlap(rollout, reference)) of it; a given
        rho (ATESD's exposure) reveals the first ceil(rho n) units."""
        if rho is None and self.overlap_metric == "anchor_recall":
            o = anchor_recall(self.tokenizer.decode(list(completion_ids), skip_special_tokens=True), solution)
            rho = reveal_ratio(o, rho_min=self.reveal_min, direction=self.reveal_direction)
        if rho is None:
            ref = self._ref_ids.get(solution)
            if ref is None:
                ref = self._ref_ids[solution] = list(self.tokenizer.encode(solution, add_special_tokens=False))
                if len(self._ref_ids) > 4096:  # a bounded cache: one epoch of a large dataset must not pile up
                    self._ref_ids.pop(next(iter(self._ref_ids)))
            o = overlap(completion_ids, ref, metric=self.overlap_metric)
            rho = reveal_ratio(o, rho_min=self.reveal_min, direction=self.reveal_direction)
        self.last_rho.append(rho)
        return truncate_reference(self.tokenizer, solution, rho, unit=self.reveal_unit, marker=self.hidden_marker)
