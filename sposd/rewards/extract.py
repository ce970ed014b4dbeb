"""Final-answer extraction from model completions: last `\\boxed{...}`, else an `Answer:` final line.

The functions live in `sposd.text` (stdlib text helpers shared with the algos and data layers); this module keeps
the rewards layer's names.
"""

from __future__ import annotations

from sposd.text import extract_answer, extract_last_boxed

__all__ = ["extract_answer", "extract_last_boxed"]
