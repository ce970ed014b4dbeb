"""Text helpers the algos, rewards and data layers share (stdlib only): final-answer extraction from a completion
(the last `\\boxed{...}`, else an `Answer:` final line) and the removal of a completion's thinking.

Every extraction function here is linear in the input length (one `rfind` plus one forward scan, no recursion,
no backtracking regex), so megabyte-long or deeply nested completions are cheap to reject.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Structural characters for brace matching; a backslash escapes the next character (`\{`, `\}`, `\\`).
_BRACE_TOKEN = re.compile(r"[{}\\]")
# `Answer: ...`, optionally bolded as `**Answer:**` or `**Answer**:`, matched on one stripped line.
_ANSWER_LINE = re.compile(r"(?:\*\*)?answer(?:\*\*)?[ \t]*:(?:\*\*)?(.*)", re.IGNORECASE)


def extract_last_boxed(text: str) -> str | None:
    """Return the stripped content of the last `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`, or None.

    Only the last box command counts (as in the OPSD eval grader): if it is unbalanced (a truncated
    completion) the result is None even when an earlier box is complete. Escaped braces `\\{`, `\\}` do
    not open or close groups. The brace-less form `\\boxed 5` takes the next whitespace-delimited token,
    up to a `$`, without a trailing `.` or `,`.
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    pos = start + len(command)
    after = text[pos : pos + 1]
    if after == "{":
        return _braced_group(text, pos)
    if after.isspace():
        return _bare_token(text, pos)
    return None


def extract_answer(text: str, *, answer_line_fallback: bool = True) -> str | None:
    """Return the last boxed answer, else (if enabled) the content of an `Answer: ...` final line, else None.

    The fallback follows the OPSDC prompt ("The last line of your response should be of the form
    Answer: $Answer"): only the last non-empty line is considered, and enclosing `$` are removed.
    """
    boxed = extract_last_boxed(text)
    if boxed is not None or not answer_line_fallback:
        return boxed
    return _answer_line(text)


def _braced_group(text: str, open_pos: int) -> str | None:
    """Content of the `{...}` group opening at `open_pos`, or None when it never closes."""
    depth = 0
    skip_to = -1
    for m in _BRACE_TOKEN.finditer(text, open_pos):
        i = m.start()
        if i < skip_to:
            continue
        char = m.group()
        if char == "\\":
            skip_to = i + 2
        elif char == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i].strip()
    return None


def _bare_token(text: str, pos: int) -> str | None:
    """The whitespace-delimited token after `\\boxed ` (MATH-style `\\boxed 5`), or None when empty."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    stop = pos
    while stop < len(text) and not text[stop].isspace() and text[stop] != "$":
        stop += 1
    token = text[pos:stop].rstrip(".,")
    return token or None


def _answer_line(text: str) -> str | None:
    """Content of the last non-empty line when it reads `Answer: ...`, else None."""
    body = text.rstrip()
    line = body[body.rfind("\n") + 1 :].strip()
    m = _ANSWER_LINE.match(line)
    if m is None:
        return None
    answer = m.group(1).strip(" \t*").rstrip(".").strip(" \t$")
    return answer or None


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_THINK_OPEN_TAIL = re.compile(r"<think>.*\Z", re.DOTALL)


def strip_thinking(text: str) -> str:
    """The text without its thinking: <think>...</think> blocks removed, then surrounding whitespace stripped.

    An unclosed trailing "<think>..." (a completion cut off mid-thought) is removed to the end of the text. A
    "</think>" with no opening tag before it (templates that pre-fill "<think>" in the prompt) drops everything up to
    and including it. Text without think tags is returned stripped.

    Args:
        text: a completion's decoded text.
    """
    text = _THINK_BLOCK.sub("", text)
    text = _THINK_OPEN_TAIL.sub("", text)
    if "</think>" in text:  # any remaining close tag has no opening one before it
        text = text.rsplit("</think>", 1)[1]
    return text.strip()
