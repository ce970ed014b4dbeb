"""Tests for sposd/evals/grade.py (`sposd grade`): grader cases on whole completions through the real verifier pool
and math-verify, the graded.jsonl / results.json contract, one-line errors, and no vLLM import.

The pool's hard per-answer deadline (a pathological answer scores 0, the others are not delayed) is tested in
tests/rewards/test_verifier.py; `sposd grade` and `sposd eval` grade through that same pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sposd.evals.grade import grade_file

# (completion, gold, extracted, verdict), collected for this project; verdicts observed with math-verify 0.9.0 and the
# default 5 s deadline. Cases where math-verify's verdict is arguable are marked ARGUABLE: the test records what it
# does. Left out on purpose: verdicts that depend on time (`x^2+2x+1` vs `(x+1)^2` takes about 1 s and flips to
# False under a 1 s math-verify timeout).
CASES = [
    # equivalent forms
    (r"So $x = \boxed{\frac{1}{2}}$.", "0.5", r"\frac{1}{2}", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", "0.5", True),
    (r"\boxed{1/2}", "0.5", "1/2", True),
    (r"\boxed{025}", "25", "025", True),  # AIME-style leading zero
    (r"\boxed{25}", "025", "25", True),
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", r"\dfrac{3}{4}", True),
    (r"\boxed{\frac{6}{4}}", r"\frac{3}{2}", r"\frac{6}{4}", True),
    (r"\boxed{1.5}", r"\frac{3}{2}", "1.5", True),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", r"2\sqrt{3}", True),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"\boxed{10^{3}}", "1000", "10^{3}", True),
    (r"$\boxed{-\frac{1}{2}}$.", "-0.5", r"-\frac{1}{2}", True),
    (r"\boxed{2^{25} \cdot 26!}", r"2^{25}\cdot 26!", r"2^{25} \cdot 26!", True),  # an HMMT-style gold
    (r"\fbox{7}", "7", "7", True),
    # units and text in boxes
    (r"\boxed{5\text{ cm}}", "5", r"5\text{ cm}", True),
    (r"\boxed{5 \mbox{ cm}}", "5", r"5 \mbox{ cm}", True),
    (r"\boxed{6}", r"6^\circ", "6", True),
    (r"\boxed{\$18.90}", "18.90", r"\$18.90", True),
    (r"\boxed{\textbf{(C)}}", "C", r"\textbf{(C)}", True),
    (r"\boxed{\text{Devon}}", "Devon", r"\text{Devon}", True),
    (r"\boxed{x=5}", "5", "x=5", True),
    # ARGUABLE: the whole box is text, math-verify reads "5cm" and rejects it
    (r"\boxed{\text{5 cm}}", "5", r"\text{5 cm}", False),
    # ARGUABLE: 0.5 is 50% but math-verify does not convert the percent of the gold
    (r"\boxed{0.5}", r"50\%", "0.5", False),
    # multiple boxes: the last one counts (also after a thinking block)
    (r"\boxed{3} wait, actually \boxed{4}", "4", "4", True),
    (r"\boxed{3} wait, actually \boxed{4}", "3", "4", False),
    (r"<think>maybe \boxed{1}</think> The answer is \boxed{2}.", "2", "2", True),
    (r"\boxed{5} and finally \boxed{}", "5", "", False),  # an empty last box is no answer
    # sets, tuples and lists
    (r"\boxed{\{1,2\}}", r"\{2,1\}", r"\{1,2\}", True),
    (r"\boxed{1, 2}", "2, 1", "1, 2", True),  # HMMT's two-value answers verify in either order
    (r"\boxed{12 \text{ and } 13}", "12, 13", r"12 \text{ and } 13", True),
    (r"\boxed{(1,2)}", "(2,1)", "(1,2)", False),  # tuples are ordered
    (r"\boxed{2, 1}", "1, 2, 3", "2, 1", False),
    (r"\boxed{x \in (0, 1)}", "(0,1)", r"x \in (0, 1)", True),
    # ARGUABLE: a repeated element collapses to a set {5}
    (r"\boxed{5, 5}", "5", "5, 5", True),
    # numbers that are close but not equal
    (r"\boxed{99.99}", "100", "99.99", False),
    (r"\boxed{0.333}", r"\frac{1}{3}", "0.333", False),
    # ARGUABLE: seven 3s are within math-verify's numeric tolerance of 1/3
    (r"\boxed{0.3333333}", r"\frac{1}{3}", "0.3333333", True),
    (r"\boxed{3.14159}", r"\pi", "3.14159", False),
    # no box, or an unfinished one
    ("The answer is 5.", "5", None, False),
    (r"so \boxed{5", "5", None, False),  # truncated mid-box
    ("so\nAnswer: 5", "5", "5", True),  # the Answer: last-line fallback
]


def _write_cases(path: Path, cases=CASES) -> None:
    with path.open("w") as f:
        for i, (completion, gold, _, _) in enumerate(cases):
            f.write(json.dumps({"benchmark": "cases", "id": f"c{i}", "completion": completion, "answer": gold}) + "\n")


@pytest.fixture(scope="module")
def pool():
    from sposd.rewards import VerifierPool

    with VerifierPool(num_workers=2) as p:  # the default deadline, as `sposd eval` and `sposd grade` use
        yield p


def test_grader_cases_through_the_pool(tmp_path, pool):
    src = tmp_path / "cases.jsonl"
    _write_cases(src)
    results = grade_file(src, tmp_path / "out", verifier=pool)
    graded = [json.loads(line) for line in (tmp_path / "out" / "graded.jsonl").read_text().splitlines()]
    got = [(g["completion"], g["answer"], g["extracted"], g["correct"]) for g in graded]
    assert got == CASES
    block = results["benchmarks"]["cases"]
    assert block["num_problems"] == len(CASES) and block["k"] == 1
    assert block["avg@k"] == pytest.approx(sum(c[3] for c in CASES) / len(CASES))


def test_outputs_keep_input_rows_and_group_samples_per_problem(tmp_path, pool):
    # problem a: samples right, wrong, right -> 2/3; problem b: 0/3 (one sample without an answer).
    # avg@3 = (2/3 + 0)/2 = 1/3; pass@2: a 1 - C(1,2)/C(3,2) = 1, b 0 -> 1/2; maj@3: a 1 (2 of 3), b 0 -> 1/2
    def row(pid, completion, gold, tokens, trunc):
        return {"benchmark": "bm", "id": pid, "completion": completion, "answer": gold, "num_tokens": tokens,
                "truncated": trunc}  # fmt: skip

    rows = [
        row("a", r"\boxed{4}", "4", 10, False),
        row("b", r"\boxed{1}", 2, 20, False),
        row("a", r"\boxed{5}", "4", 30, False),
        row("b", "no idea", 2, 40, True),
        row("a", r"\boxed{4.0}", "4", 50, False),
        row("b", r"\boxed{3}", 2, 60, False),
        {"benchmark": "other", "id": "a", "completion": r"\boxed{1}", "answer": "1", "extra": "kept"},
    ]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = grade_file(src, verifier=pool)  # outputs default to the input's folder
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in g.items() if k not in ("correct", "extracted")} for g in graded] == rows
    assert [g["correct"] for g in graded] == [True, False, False, False, True, False, True]
    assert [g["extracted"] for g in graded] == ["4", "1", "5", None, "4.0", "3", "1"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results and results["complete"] is True
    bm = results["benchmarks"]["bm"]
    assert (bm["k"], bm["num_problems"], bm["num_samples"]) == (3, 2, 6)
    assert bm["avg@k"] == pytest.approx(1 / 3)
    assert bm["pass@k"] == pytest.approx({"1": 1 / 3, "2": 1 / 2, "3": 1 / 2})
    assert bm["maj@k"] == pytest.approx(1 / 2)
    # tokens 10..60 -> mean 35, max 60; 1 truncated of 6
    assert (bm["mean_response_tokens"], bm["max_response_tokens"], bm["truncation_rate"]) == (35, 60, 1 / 6)
    assert bm["per_problem"] == [{"id": "a", "correct": 2, "samples": 3}, {"id": "b", "correct": 0, "samples": 3}]
    other = results["benchmarks"]["other"]
    assert other["avg@k"] == 1.0 and other["mean_response_tokens"] is None
    # macro: unweighted over bm and other: (1/3 + 1)/2
    assert results["macro"]["avg@k"] == pytest.approx(2 / 3)
    assert results["settings"]["grading"]["timeout_s"] == 5.0
    assert results["settings"]["regraded"]["input"] == str(src)


def _cli(*args: str, code: str = "") -> subprocess.CompletedProcess:
    prog = f"import sys; from sposd.cli import main; main({list(args)!r}){code}"
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)


def test_cli_malformed_row_is_one_line_naming_file_line_and_field(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"benchmark": "b", "id": 1, "completion": "x", "answer": "1"}) + "\n"
                   + json.dumps({"benchmark": "b", "id": 1, "answer": "1"}) + "\n")  # fmt: skip
    r = _cli("grade", str(src))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"sposd: error: {src}:2: missing field 'completion'; each row needs "
                                             "['benchmark', 'id', 'completion', 'answer']"]  # fmt: skip
    assert not (tmp_path / "results.json").exists()
    r = _cli("grade", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"sposd: error: {tmp_path}/nope.jsonl: no such file"]


def test_cli_grades_without_importing_vllm_or_torch(tmp_path):
    src = tmp_path / "in.jsonl"
    _write_cases(src, [*CASES[:3], ("so\nAnswer: 5", "5", None, False)])
    r = _cli(
        "grade", str(src), "--out", str(tmp_path / "o"), "--workers", "1", "--no-answer-line-fallback",
        code="; print('vllm' in sys.modules, 'torch' in sys.modules)",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False False"
    assert "avg@k" in r.stdout
    graded = [json.loads(line) for line in (tmp_path / "o" / "graded.jsonl").read_text().splitlines()]
    # the Answer: line is not read with the fallback off
    assert [(g["extracted"], g["correct"]) for g in graded] == [(c[2], c[3]) for c in CASES[:3]] + [(None, False)]
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["settings"]["grading"]["answer_line_fallback"] is False
