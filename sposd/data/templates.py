"""Prompt text and prompt ids: the student's user message, the OPSD privileged (teacher) message, chat rendering.

Strings follow spec/ALGORITHMS.md section 2 (siyan-zhao/OPSD): the student sees
"Problem: {problem}\\n\\n{instruction}"; the OPSD teacher sees the problem, the reference solution and a
transition sentence before the same instruction.
"""

from __future__ import annotations

from sposd.types import Prompt

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TOY_INSTRUCTION = "Put the final answer in \\boxed{}."

PRIVILEGED_TEMPLATE = (
    "{problem}\n\nHere is a reference solution to this problem:\n{solution}\n\n\n"
    "After understanding the reference solution and the rationale behind each step, now articulate your own "
    "step-by-step reasoning that derives the same final answer to the problem below:\n\n{instruction}"
)


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
    ids = render_prompt_ids(tokenizer, build_user_message(record["problem"], instruction=instruction),
                            enable_thinking=enable_thinking)
    meta = {k: v for k, v in record.items() if k not in ("id", "problem", "answer", "solution")}
    return Prompt(
        id=str(record["id"]),
        problem=record["problem"],
        prompt_ids=ids,
        answer=str(record["answer"]),
        solution=record.get("solution"),
        meta=meta,
    )
