"""A crafted recording (two rows of a toy step, hand-set values) written as a run's inspect/step_N.jsonl.gz.

Row 0 (wrong): "12+7=19. 19-15=5. \\boxed{5}" (27 characters, one token each); D_t = 0.5 at token 3, 2.0 at token 15
(the wrong result "5": 19-15 is 4), 0 elsewhere; token 15 has 3 clipped vocabulary entries; weight 0.5 everywhere.
Row 1 (correct): "12+7=19. 19-15=4. \\boxed{4}"; D_t = 0.1 at tokens 0..19, loss weight 0 from token 20 on.
"""

from __future__ import annotations

from pathlib import Path

from sposd.inspect.record import write_rows
from sposd.inspect.records import FORMAT_VERSION, step_path

WRONG = "12+7=19. 19-15=5. \\boxed{5}"
RIGHT = "12+7=19. 19-15=4. \\boxed{4}"
CONTEXT = "<|im_start|>user\nCompute 12+7-15.\nReference: 12+7=19. 19-15=4. \\boxed{4}<|im_end|>\n"


def _row(index: int, text: str, div: list[float], clipped: list[float], weight: list[float], correct: bool) -> dict:
    n = len(text)
    priv = "12+7=19. 19-15=4. \\boxed{4}"
    return {
        "version": FORMAT_VERSION,
        "step": 0,
        "row": index,
        "rank": 0,
        "id": f"toy-{index}",
        "problem": "Compute 12+7-15.",
        "answer": "4",
        "solution": priv,
        "correct": correct,
        "reward": float(correct),
        "advantage": 0.5 if correct else -0.5,
        "group_pass_rate": 0.5,
        "distill_weight": 0.5,
        "distill_len": sum(w > 0 for w in weight),
        "loss": {
            "divergence": "fkl",
            "beta": 0.5,
            "support": "full",
            "topk": 50,
            "clip_max": 0.05,
            "clip_mode": "element",
            "sampled_token": False,
            "temperature": 1.0,
        },
        "prompt": "<|im_start|>user\nCompute 12+7-15.<|im_end|>\n",
        "teacher_context": CONTEXT,
        "privileged": [CONTEXT.index(priv), CONTEXT.index(priv) + len(priv)],
        "tokens": list(text),
        "div": div,
        "div_raw": [2 * x for x in div],
        "clipped": clipped,
        "weight": weight,
        "p_student": [0.5] * n,
        "p_teacher": [0.25] * n,
        "teacher_top": [[["4", 0.9], ["5", 0.05], ["3", 0.01]]] * n,
        "student_top": [[["5", 0.6], ["4", 0.3], ["6", 0.05]]] * n,
    }


def crafted_rows(step: int = 3) -> list[dict]:
    div_a = [0.0] * 27
    div_a[3], div_a[15] = 0.5, 2.0
    clip_a = [0.0] * 27
    clip_a[15] = 3.0
    rows = [
        _row(0, WRONG, div_a, clip_a, [0.5] * 27, correct=False),
        _row(1, RIGHT, [0.1] * 20 + [0.0] * 7, [0.0] * 27, [0.5] * 20 + [0.0] * 7, correct=True),
    ]
    for r in rows:
        r["step"] = step
    return rows


def write_crafted_run(run_dir: Path, steps=(3, 6)) -> Path:
    """A run directory whose inspect/ holds the crafted rows at each of `steps`."""
    for s in steps:
        write_rows(step_path(run_dir, s), crafted_rows(s))
    return run_dir
