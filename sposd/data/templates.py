"""Prompt text and prompt ids: the student's user message, the OPSD privileged (teacher) message, chat rendering.

Strings follow spec/ALGORITHMS.md section 2 (siyan-zhao/OPSD): the student sees
"Problem: {problem}\\n\\n{instruction}"; the OPSD teacher sees the problem, the reference solution and a
transition sentence before the same instruction.
"""

from __future__ import annotations

from sposd.text import strip_thinking  # noqa: F401  (re-exported: data's name for it)
from sposd.types import Prompt

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TOY_INSTRUCTION = "Put the final answer in \\boxed{}."

PRIVILEGED_TEMPLATE = (
    "{problem}\n\nHere is a reference solution to this problem:\n{solution}\n\n\n"
    "After understanding the reference solution and the rationale behind each step, now articulate your own "
    "step-by-step reasoning that derives the same final answer to the problem below:\n\n{instruction}"
)

# OPSD's current teacher message (siyan-zhao/OPSD data_collator.py after the 2026-03-18 history, spec section 2's box;
# the same text in every fork read): the solution between markers, then the strengthened "own words, do not copy"
# guard (its "\n\n...:\n" framing included), a blank line and the student's instruction.
OPSD_V3_TEMPLATE = (
    "Problem: {problem}\n\nHere is a reference solution to this problem:\n"
    "=== Reference Solution Begin ===\n{solution}\n=== Reference Solution End ===\n"
    "\n\nAfter reading the reference solution above, make sure you truly understand the reasoning behind each step "
    "\u2014 do not copy or paraphrase it. Now, using your own words and independent reasoning, derive the same final "
    "answer to the problem above. Think step by step, explore different approaches, and don't be afraid to "
    "backtrack or reconsider if something doesn't work out:\n\n{instruction}"
)
# What OPSD's author suggests appending to a thinking teacher's context when the student does not think (issue #10):
# the student's first tokens are then scored as the start of the teacher's thinking.
OPEN_THINK = "<think>\n"

# SDPO's reprompt wrapper (spec section 14, "Config alternatives"), with the privileged text as the correct solution.
# SDPO puts the full original prompt (problem + instruction) in front; here the problem comes first and the same
# instruction the student sees is appended after "Correctly solve the original question.", so the teacher's last
# line states the answer format exactly as in the OPSD wrapper and the two wrappers differ only in the middle text.
SDPO_TEMPLATE = "{problem}\nCorrect solution:\n\n{solution}\n\nCorrectly solve the original question.\n\n{instruction}"
# SDPO's reprompt verbatim (spec section 3; lasgroup/SDPO `_maybe_build_self_distillation_batch`): {prompt} is the
# content of the student's last user message, {solution} the solution section (empty without a demonstration).
SDPO_REPROMPT_TEMPLATE = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
SDPO_SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{successful_previous_attempt}"
# SD-Zero's reviser prompt: spec section 5's project default (the paper's prompt is not public).
REVISER_TEMPLATE = (
    "{problem}\n\nHere is a previous attempt:\n{attempt}\n\nThe final answer of this attempt is {verdict}. "
    "Write an improved, correct solution."
)
# OPSDC's teacher prompt `length_prune_teacher`, exact (spec section 10; HJSang/OPSD_Reasoning_Compression
# workspace/config/prompts.json).
CONCISE_TEMPLATE = (
    "Solve the following math problem concisely and correctly. Be direct \u2014 avoid unnecessary elaboration, "
    "redundant steps, or restating the problem. Focus only on the key reasoning steps needed to reach the answer."
    "\n\nThe last line of your response should be of the form Answer: $Answer (without quotes) where $Answer is "
    'the answer to the problem.\n\n{question}\n\nRemember to put your answer on its own line after "Answer:".'
)
TEACHER_WRAPPERS = ("opsd", "opsd_v3", "sdpo", "sdpo_exact")
STUDENT_PROMPT_MODES = ("chat_template", "stripped_template")
REFERENCE_UNITS = ("tokens", "lines")
HIDDEN_MARKER = "(the rest of the solution is hidden)"



def build_user_message(problem: str, *, instruction: str = MATH_INSTRUCTION) -> str:
    """The student's user turn (OPSD's student message): "Problem: {problem}\\n\\n{instruction}"."""
    return f"Problem: {problem}\n\n{instruction}" if instruction else f"Problem: {problem}"


def build_privileged_message(problem: str, solution: str, *, instruction: str = MATH_INSTRUCTION) -> str:
    """The OPSD teacher's user turn: the problem plus a reference solution s* (ALGORITHMS.md section 2)."""
    return PRIVILEGED_TEMPLATE.format(problem=problem, solution=solution, instruction=instruction)


def render_prompt_ids(tokenizer, user_message: str, *, enable_thinking: bool) -> list[int]:
    """Token ids of one user turn rendered by the tokenizer's chat template, generation prompt added.

    Rendered to text first and then encoded without extra special tokens, which is what
    `apply_chat_template(tokenize=True)` does, but independent of its return type across transformers versions.
    """
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def make_prompt(
    record: dict, tokenizer, *, instruction: str = MATH_INSTRUCTION, enable_thinking: bool = False
) -> Prompt:
    """Turn a data record (`id`, `problem`, `answer`, optional `solution`) into a rendered student `Prompt`."""
    ids = render_prompt_ids(
        tokenizer, build_user_message(record["problem"], instruction=instruction), enable_thinking=enable_thinking
    )
    meta = {k: v for k, v in record.items() if k not in ("id", "problem", "answer", "solution")}
    return Prompt(
        id=str(record["id"]),
        problem=record["problem"],
        prompt_ids=ids,
        answer=str(record["answer"]),
        solution=record.get("solution"),
        meta=meta,
    )


def build_teacher_message(
    problem: str, privileged: str, *, wrapper: str = "opsd", instruction: str = MATH_INSTRUCTION
) -> str:
    """The teacher's user turn around privileged text (a reference solution, a witness, or a truncated reference).

    Args:
        problem: the bare problem text.
        privileged: the text only the teacher sees.
        wrapper: "opsd" = PRIVILEGED_TEMPLATE (same output as build_privileged_message), "opsd_v3" =
            OPSD_V3_TEMPLATE (OPSD's current wording), "sdpo" = SDPO_TEMPLATE
            (with an empty instruction the trailing blank line and instruction are dropped), "sdpo_exact" = SDPO's
            reprompt around the student's own user message (`build_user_message`), no feedback section.
        instruction: the same instruction the student sees.
    """
    if wrapper == "opsd":
        return build_privileged_message(problem, privileged, instruction=instruction)
    if wrapper == "opsd_v3":
        return OPSD_V3_TEMPLATE.format(problem=problem, solution=privileged, instruction=instruction)
    if wrapper == "sdpo_exact":
        return SDPO_REPROMPT_TEMPLATE.format(
            prompt=build_user_message(problem, instruction=instruction),
            solution=SDPO_SOLUTION_TEMPLATE.format(successful_previous_attempt=privileged),
            feedback="",
        )
    if wrapper == "sdpo":
        msg = SDPO_TEMPLATE.format(problem=problem, solution=privileged, instruction=instruction)
        return msg if instruction else msg.removesuffix("\n\n")
    raise ValueError(f"unknown teacher wrapper {wrapper!r}; choose from {TEACHER_WRAPPERS}")


def build_reviser_message(problem: str, attempt: str, *, correct: bool) -> str:
    """SD-Zero's reviser turn: the problem, the generator's attempt and its binary verdict (REVISER_TEMPLATE)."""
    return REVISER_TEMPLATE.format(problem=problem, attempt=attempt, verdict="correct" if correct else "incorrect")


def build_concise_message(problem: str) -> str:
    """OPSDC's teacher turn: the problem inside the "solve concisely" instruction (CONCISE_TEMPLATE)."""
    return CONCISE_TEMPLATE.format(question=problem)




def stripped_template_ids(tokenizer, prompt_ids: list[int]) -> list[int]:
    """OPSD's paper setting for the student context: the chat template with its special tokens removed.

    The chat-templated prompt is decoded with skip_special_tokens=True (dropping <|im_start|> / <|im_end|>; <think>
    tags are not special in Qwen3 and stay) and re-encoded without special tokens (spec section 2).

    Args:
        tokenizer: the policy's tokenizer.
        prompt_ids: the chat-templated prompt ids (render_prompt_ids).
    """
    text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    return list(tokenizer.encode(text, add_special_tokens=False))


def truncate_reference(tokenizer, solution: str, rho: float, *, unit: str = "tokens", marker: bool = False) -> str:
    """PAINT's overlap-based suffix masking: keep the first reveal_count(n, rho) units of the solution, drop the rest.

    unit "tokens": n = the number of tokenizer tokens of the solution (encoded without special tokens); the kept
    prefix ids are decoded (a trailing U+FFFD from a cut through a multi-byte character is removed). unit "lines":
    n = the number of lines (str.splitlines), the first lines are kept without the kept last line's line break.
    When nothing is dropped (rho = 1, or an empty solution) the solution is returned unchanged.

    Args:
        tokenizer: the policy's tokenizer (unit "tokens").
        solution: the reference solution s*.
        rho: reveal ratio in [0, 1] (sposd.ops.overlap.reveal_ratio).
        unit: one of REFERENCE_UNITS.
        marker: append "\n" + HIDDEN_MARKER when anything was dropped.
    """
    from sposd.ops.overlap import reveal_count  # lazy: keeps this module free of the torch import in sposd.ops

    if unit == "tokens":
        ids = list(tokenizer.encode(solution, add_special_tokens=False))
        k = reveal_count(len(ids), rho)
        if k >= len(ids):
            return solution
        kept = tokenizer.decode(ids[:k]).rstrip("\ufffd")
    elif unit == "lines":
        lines = solution.splitlines(keepends=True)
        k = reveal_count(len(lines), rho)
        if k >= len(lines):
            return solution
        kept = "".join(lines[:k])
        kept = kept.removesuffix("\r\n") if kept.endswith("\r\n") else kept.removesuffix("\n")
    else:
        raise ValueError(f"unknown reference unit {unit!r}; choose from {REFERENCE_UNITS}")
    if not marker:
        return kept
    return f"{kept}\n{HIDDEN_MARKER}" if kept else HIDDEN_MARKER
