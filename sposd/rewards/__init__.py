"""Verifiable rewards: final-answer extraction and math-verify grading in a process pool."""

from sposd.rewards.extract import extract_answer, extract_last_boxed
from sposd.rewards.verifier import MAX_ANSWER_CHARS, VerifierPool, grade_extracted, grade_one

__all__ = [
    "MAX_ANSWER_CHARS",
    "VerifierPool",
    "extract_answer",
    "extract_last_boxed",
    "grade_extracted",
    "grade_one",
]
