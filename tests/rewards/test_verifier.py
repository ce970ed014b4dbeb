"""Tests for sposd/rewards/verifier.py: verdicts, the pool's hard deadline, worker recovery, cleanup, speed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sposd.rewards.verifier import MAX_ANSWER_CHARS, VerifierPool, grade_extracted, grade_one

HMMT_10 = r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"
TIMEOUT_S = 5.0

# (extracted prediction, gold, verdict). Verdicts observed with math-verify 0.9.0.
VERDICTS = [
    ("0.5", r"\frac{1}{2}", True),
    (r"\frac{1}{2}", "0.5", True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    (r"\tfrac12", "0.5", True),
    ("025", "25", True),
    ("25", "025", True),
    ("5.0", "5", True),
    ("1,000", "1000", True),
    (r"10\text{ cm}", "10", True),
    (r"10 \text{ inches}", "10", True),
    (r"5^{\circ}", "5", True),
    (r"50\%", "50", True),
    ("x = 5", "5", True),
    (r"\text{Devon}", r"\text{Devon}", True),
    ("C", r"\text{(C)}", True),
    (r"\frac{\sqrt{570}}{12}", r"\sqrt{\frac{95}{24}}", True),
    (r"2^{25}\cdot 26!", r"2^{25} \cdot 26!", True),
    ("1+x", "x+1", True),
    (r"[0, 1)", r"[0,1)", True),
    (r"\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}", HMMT_10, True),  # a two-element answer, either order
    (HMMT_10, HMMT_10, True),
    (r"\{2,1\}", r"\{1,2\}", True),
    (r"\frac{-1-\sqrt{17}}{2}", HMMT_10, False),  # one of the two values is not the answer
    ("(2,1)", "(1,2)", False),  # tuples are ordered
    (r"(0,1]", r"[0,1)", False),
    ("26", "25", False),
    ("-25", "25", False),
    ("3.14", r"\pi", False),
    (r"\text{10 cm}", "10", False),  # the whole box is text: math-verify reads "10cm"
    ("", "5", False),
    ("   ", "5", False),
]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        yield p


def _alive(pid: int) -> bool:
    """Whether `pid` is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_dead(pids: list[int], within_s: float) -> list[int]:
    """Poll until every pid is gone; return those still alive after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize(("pred", "gold", "expected"), VERDICTS)
def test_grade_extracted_verdicts(pred, gold, expected):
    assert grade_extracted(pred, gold) is expected


def test_pool_verdicts_match_in_process_grading(pool):
    pairs = [(f"Reasoning...\n\\boxed{{{pred}}}", gold) for pred, gold, _ in VERDICTS]
    assert pool.grade(pairs) == [expected for _, _, expected in VERDICTS]


def test_grade_one_extracts_before_grading():
    assert grade_one(r"think... $\boxed{\dfrac{1}{2}}$", "0.5")
    assert grade_one(r"\boxed{3} no wait \boxed{4}", "4")
    assert not grade_one(r"\boxed{4} no wait \boxed{3}", "4")  # the last box counts
    assert grade_one("think...\nAnswer: 4", "4")
    assert not grade_one("think...\nAnswer: 4", "4", answer_line_fallback=False)
    assert not grade_one("the answer is 4", "4")  # nothing extractable
    assert not grade_one(r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}", "1" * (MAX_ANSWER_CHARS + 1))


def test_pool_handles_answer_lines_and_empty_input(pool):
    pairs = [("think\nAnswer: $\\frac{1}{2}$", "0.5"), ("", "5"), ("no answer", "5"), (r"\boxed{}", "5")]
    assert pool.grade(pairs) == [True, False, False, False]
    assert pool.grade([]) == []


def _pathological() -> dict[str, str]:
    rng = random.Random(0)
    garbage = bytes(rng.randrange(256) for _ in range(1_500)).decode("latin-1")
    in_box = "".join(c for c in garbage if c not in "{}\\")
    return {
        "power tower": r"\boxed{9^{9^{9^{9}}}}",
        "huge factorial": r"\boxed{(10^{10})!}",
        "huge power": r"\boxed{10^{10^{10}}}",
        "10k nested braces": "\\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}",
        "900 nested braces": "\\boxed{" + "{" * 900 + "5" + "}" * 900 + "}",
        "deep fraction": "\\boxed{" + "\\frac{1}{" * 150 + "5" + "}" * 150 + "}",
        "1 MB of text": "".join(rng.choice("abc xyz+-=()\n") for _ in range(1_000_000)),
        "1 MB answer": "\\boxed{" + "1+" * 500_000 + "1}",
        "unbalanced": r"\boxed{\frac{1}{2" + "{" * 1_000,
        "binary garbage": os.urandom(100_000).decode("latin-1"),
        "garbage in box": "\\boxed{" + in_box + "}",
        "empty": "",
    }


@pytest.mark.parametrize("name", list(_pathological()))
def test_pathological_input_is_false_within_deadline(pool, name):
    text = _pathological()[name]
    start = time.perf_counter()
    verdicts = pool.grade([(text, "5"), (r"\boxed{5}", "5")])
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.2f} s")
    assert verdicts == [False, True]
    assert elapsed < TIMEOUT_S + 1.5


def test_stuck_worker_is_killed_at_the_deadline():
    # timeout_s=0.5 is below math-verify's 1 s alarm granularity, so the parent's kill is what stops it.
    with VerifierPool(num_workers=2, timeout_s=0.5) as p:
        p.grade([(r"\boxed{1}", "1")])
        pids = p.worker_pids
        start = time.perf_counter()
        verdicts = p.grade([(r"\boxed{9^{9^{9^{9}}}}", "5"), (r"\boxed{5}", "5")])
        assert time.perf_counter() - start < 2.0
        assert verdicts == [False, True]
        assert pids[0] not in p.worker_pids
        assert _wait_dead([pids[0]], within_s=2.0) == []
        assert p.grade([(r"\boxed{5}", "5")] * 4) == [True] * 4


def test_worker_ignoring_signals_is_replaced():
    # A stopped process never returns to the interpreter (like C code): only SIGKILL ends it.
    with VerifierPool(num_workers=2, timeout_s=1.0) as p:
        p.grade([(r"\boxed{1}", "1")])
        stopped = p.worker_pids[0]
        os.kill(stopped, signal.SIGSTOP)
        start = time.perf_counter()
        verdicts = p.grade([(r"\boxed{5}", "5")] * 6)
        assert time.perf_counter() - start < 3.0
        assert verdicts == [False] + [True] * 5  # the answer sent to the stopped worker hits the deadline
        assert stopped not in p.worker_pids
        assert _wait_dead([stopped], within_s=2.0) == []
        assert p.grade([(r"\boxed{5}", "5")] * 6) == [True] * 6


def test_pool_survives_killed_workers():
    with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        p.grade([(r"\boxed{1}", "1")])
        for pid in p.worker_pids:
            os.kill(pid, signal.SIGKILL)
        _wait_dead(p.worker_pids, within_s=2.0)
        assert p.grade([(r"\boxed{5}", "5"), (r"\boxed{6}", "5")] * 5) == [True, False] * 5


def test_pool_built_in_a_finished_thread_still_grades():
    # The workers' death signal follows the thread that started them; the pool must replace them.
    box: list[VerifierPool] = []
    builder = threading.Thread(target=lambda: box.append(VerifierPool(num_workers=2)))
    builder.start()
    builder.join()
    with box[0] as p:
        assert p.grade([(r"\boxed{5}", "5"), (r"\boxed{6}", "5")] * 3) == [True, False] * 3


def test_close_is_idempotent_and_stops_workers():
    p = VerifierPool(num_workers=2)
    assert p.grade([(r"\boxed{5}", "5")]) == [True]
    pids = p.worker_pids
    p.close()
    p.close()
    assert _wait_dead(pids, within_s=2.0) == []
    with pytest.raises(RuntimeError, match="closed"):
        p.grade([(r"\boxed{5}", "5")])


def test_workers_die_with_the_parent(tmp_path):
    # The parent is SIGKILLed (no cleanup runs) while one worker is stopped, standing in for one stuck in C.
    script = textwrap.dedent(
        """
        import os, signal, sys
        from sposd.rewards import VerifierPool
        if __name__ == "__main__":
            pool = VerifierPool(num_workers=2)
            assert pool.grade([(r"\\boxed{5}", "5")]) == [True]
            os.kill(pool.worker_pids[0], signal.SIGSTOP)
            print(*pool.worker_pids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    path = tmp_path / "orphan.py"
    path.write_text(script)
    log = tmp_path / "pids.txt"
    with log.open("w") as stdout:  # a file, not a pipe: a surviving worker must not block this test
        proc = subprocess.run(
            [sys.executable, str(path)], check=False, stdout=stdout, stderr=subprocess.PIPE, timeout=60
        )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(p) for p in log.read_text().split()]
    assert len(pids) == 2
    assert _wait_dead(pids, within_s=5.0) == []


@pytest.mark.parametrize("kwargs", [{"num_workers": 0}, {"timeout_s": 0}])
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        VerifierPool(**kwargs)


def test_throughput_of_integer_answers(pool):
    n = 1000
    pairs = [(f"... so the answer is \\boxed{{{i if i % 3 else i + 1}}}.", str(i)) for i in range(n)]
    start = time.perf_counter()
    verdicts = pool.grade(pairs)
    elapsed = time.perf_counter() - start
    print(f"graded {n} integer answers in {elapsed:.2f} s: {n / elapsed:.0f} answers/s on 2 workers")
    assert verdicts == [i % 3 != 0 for i in range(n)]
    assert n / elapsed > 100
