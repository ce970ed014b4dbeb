"""Teacher contexts: what privileged text the teacher of each selected completion sees (registered components).

A context component answers, for one group, which completion's text (or which reference) each selected completion's
teacher reads, and renders it as a `TeacherContext`. Every `algo.distill.context` value is one class here; adding a
context is one class and a `register_context` line, and no other code looks at the name.

Legend: G completions in one group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sposd.ops.selection import select_longest_minority
from sposd.text import strip_thinking
from sposd.types import Completion, RolloutGroup

CONTEXT_KINDS = ("wrap", "reviser", "concise", "splice")


@dataclass
class TeacherContext:
    """One teacher context, as the data layer renders it (`sposd.data.teacher.TeacherPrompts.render_context`).

    Attributes:
        kind: "wrap" (the teacher message wrapper around privileged text: a reference, witness, partial
            reference or sibling), "reviser" (SD-Zero's reviser prompt around the attempt `text` and its
            `verdict`), "concise" (OPSDC's concise-solving instruction around the problem; `text` unused),
            "splice" (the student's own prompt ids followed by the tokens of `text`, CEPO's answer contexts).
        text: the privileged text.
        verdict: the attempt's binary reward ("reviser").
    """

    kind: str
    text: str
    verdict: bool | None = None

    def __post_init__(self) -> None:
        assert self.kind in CONTEXT_KINDS, f"unknown teacher context kind {self.kind!r}"


@dataclass
class GroupView:
    """What the components read of one group.

    Attributes:
        group: the verified group.
        lengths: each completion's length in the configured unit (tokens or characters).
        witness: the group's witness index (chosen by the selection or the context), or None.
    """

    group: RolloutGroup
    lengths: list[int]
    witness: int | None = None

    @property
    def comps(self) -> list[Completion]:
        return self.group.completions

    @property
    def correct(self) -> list[bool]:
        return [c.correct for c in self.group.completions]


@dataclass
class RenderArgs:
    """Inputs some contexts need besides the group: how to cut a reference, ATESD's ratio, the witness's thinking."""

    cut_reference: Callable | None = None
    exposure_ratio: float | None = None
    strip_witness_thinking: bool = False


class ContextComponent:
    """Base: the teacher reads the dataset's reference solution (OPSD).

    Class attributes:
        needs_solution: the context is built from the dataset's reference solution (a record without one gets no
            teacher; `sposd train` refuses a data set without solutions).
        compares_group: the context compares completions within a group (needs group_size >= 2).
        cuts_reference: the reference is cut (PAINT, ATESD): a full-solution partner context exists.
        uses_controller: the context's ratio comes from ATESD's exposure controller.
        votes: the context needs the group's answer classes (`Completion.answer_class`, majority voting).
    """

    needs_solution = True
    compares_group = False
    cuts_reference = False
    uses_controller = False
    votes = False

    def sources(self, chosen: list[int], view: GroupView) -> list[tuple[int, int | None]]:
        """(completion to distill, index of the completion whose text the teacher reads, or None)."""
        return [(i, None) for i in chosen]

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        return TeacherContext("wrap", view.group.prompt.solution or "")


class _WitnessText(ContextComponent):
    """The teacher reads another completion of the group (its thinking kept or stripped)."""

    needs_solution = False
    compares_group = True

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        assert source is not None, f"{type(self).__name__} renders a completion's text"
        text = view.comps[source].text
        if args.strip_witness_thinking:
            text = strip_thinking(text)
        return TeacherContext("wrap", text)


class ShortestCorrect(_WitnessText):
    """SSOPD: the group's shortest correct completion (the witness; ties -> lowest index), for every other selected
    completion. A group without a correct completion gives no target."""

    def sources(self, chosen: list[int], view: GroupView) -> list[tuple[int, int | None]]:
        if view.witness is None:
            right = [i for i, ok in enumerate(view.correct) if ok]
            view.witness = min(right, key=lambda i: (view.lengths[i], i)) if right else None
        if view.witness is None:
            return []
        return [(i, view.witness) for i in chosen if i != view.witness]


class ShortestMajority(_WitnessText):
    """U-OPSD: the shortest completion agreeing with the group's majority answer (the witness the selection
    `longest_minority` found, or the majority's shortest itself; without a majority, no target)."""

    votes = True

    def sources(self, chosen: list[int], view: GroupView) -> list[tuple[int, int | None]]:
        if view.witness is None:
            sel = select_longest_minority(view.lengths, [c.answer_class for c in view.comps])
            view.witness = sel[0] if sel is not None else None
        if view.witness is None:
            return []
        return [(i, view.witness) for i in chosen if i != view.witness]


class SuccessfulSibling(_WitnessText):
    """SDPO / SRPO: each sample's demonstration is the first correct completion of the group other than itself; a
    sample without one gets no teacher."""

    def sources(self, chosen: list[int], view: GroupView) -> list[tuple[int, int | None]]:
        out = []
        for i in chosen:
            j = next((j for j, ok in enumerate(view.correct) if ok and j != i), None)
            if j is not None:
                out.append((i, j))
        return out


class PartialSolution(ContextComponent):
    """PAINT: the reference cut according to the rollout-reference overlap (`algo.distill.partial.*`)."""

    cuts_reference = True

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        assert args.cut_reference is not None, "context partial_solution needs cut_reference"
        return TeacherContext("wrap", args.cut_reference(view.comps[i].token_ids, view.group.prompt.solution))


class ExposurePrefix(ContextComponent):
    """ATESD: the first ceil(rho n) reference units, rho from the exposure controller (`algo.distill.exposure.*`)."""

    cuts_reference = True
    uses_controller = True

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        assert args.cut_reference is not None and args.exposure_ratio is not None, "exposure_prefix needs rho, a cut"
        solution = view.group.prompt.solution
        return TeacherContext("wrap", args.cut_reference(view.comps[i].token_ids, solution, args.exposure_ratio))


class Reviser(ContextComponent):
    """SD-Zero: the sample's own attempt and its binary verdict in the reviser prompt."""

    needs_solution = False

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        c = view.comps[i]
        return TeacherContext("reviser", c.text, verdict=bool(c.correct))


class ConciseInstruction(ContextComponent):
    """OPSDC: the problem inside the "solve concisely" instruction; no privileged text."""

    needs_solution = False

    def render(self, i: int, source: int | None, view: GroupView, args: RenderArgs) -> TeacherContext:
        return TeacherContext("concise", "")


TEACHER_CONTEXTS: dict[str, type[ContextComponent]] = {}


def register_context(name: str, cls: type[ContextComponent]) -> None:
    if name in TEACHER_CONTEXTS:
        raise ValueError(f"teacher context {name!r} already registered by {TEACHER_CONTEXTS[name].__name__}")
    TEACHER_CONTEXTS[name] = cls


for _name, _cls in (
    ("reference_solution", ContextComponent),
    ("shortest_correct", ShortestCorrect),
    ("shortest_majority", ShortestMajority),
    ("partial_solution", PartialSolution),
    ("exposure_prefix", ExposurePrefix),
    ("successful_sibling", SuccessfulSibling),
    ("reviser", Reviser),
    ("concise_instruction", ConciseInstruction),
):
    register_context(_name, _cls)


def make_context(name: str) -> ContextComponent:
    """The registered context `name` (algo.distill.context)."""
    if name not in TEACHER_CONTEXTS:
        raise ValueError(f"algo.distill.context={name!r} is not valid; choose from {sorted(TEACHER_CONTEXTS)}")
    return TEACHER_CONTEXTS[name]()
