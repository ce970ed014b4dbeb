"""The data `sposd inspect` reads: the recording's reader, the step summary, the toy task's first error, the page
and the CLI's one-line errors (on crafted recordings, tests/inspection/crafted.py)."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import pytest

from sposd.errors import UserError
from sposd.inspect.app import inspect_run
from sposd.inspect.arith import char_to_token, first_error_char, toy_chain
from sposd.inspect.page import render_page, shade
from sposd.inspect.records import (
    load_step,
    mass_by_relative_position,
    recorded_steps,
    step_path,
    step_summary,
    top_share_mass,
)
from tests.inspection.crafted import RIGHT, WRONG, crafted_rows, write_crafted_run


def test_toy_chain_and_first_error():
    assert toy_chain("Compute 12+7-15.") == [(12, "+", 7, 19), (19, "-", 15, 4)]
    assert toy_chain("What is 2+2?") is None
    assert first_error_char(RIGHT, "Compute 12+7-15.", "4") is None
    assert first_error_char(WRONG, "Compute 12+7-15.", "4") == 15  # "19-15=5": the result, character 15
    assert first_error_char("12+8=20. 20-15=5. \\boxed{5}", "Compute 12+7-15.", "4") == 0  # copy error: equation start
    assert first_error_char("12+7=19. \\boxed{3}", "Compute 12+7-15.", "4") == 16  # no 2nd equation: the boxed value
    assert first_error_char("3-5=-2. -2+4=2. \\boxed{2}", "Compute 3-5+4.", "2") is None  # negative intermediates
    assert first_error_char("anything", "not a toy problem", "4") is None
    assert (
        char_to_token(["12", "+", "7"], 2) == 1 and char_to_token(["ab"], 5) is None and char_to_token([], None) is None
    )


def test_top_share_mass_by_hand():
    # 20 values: ceil(0.05 * 20) = 1 largest -> 10 / (10 + 19 x 1) = 10 / 29
    mass, threshold = top_share_mass([10.0] + [1.0] * 19)
    assert mass == pytest.approx(10 / 29) and threshold == 10.0
    assert top_share_mass([]) == (0.0, float("inf")) and top_share_mass([0.0, 0.0])[0] == 0.0


def test_step_summary_of_the_crafted_rows_by_hand():
    s = step_summary(crafted_rows())
    # positions with loss: row 0 all 27, row 1 the first 20 -> 47; values 2.0, 0.5, 25 x 0, 20 x 0.1 (sum 4.5)
    # top ceil(0.05 x 47 = 2.35) = 3 values: 2.0 + 0.5 + 0.1 = 2.6 -> 2.6 / 4.5; their smallest 0.1 is the threshold
    assert s["positions"] == 47 and s["div_sum"] == pytest.approx(4.5)
    assert s["top5_mass"] == pytest.approx(2.6 / 4.5) and s["large_threshold"] == pytest.approx(0.1)
    assert s["clipped_frac"] == pytest.approx(1 / 47)  # token 15 of row 0
    # row 0: first D_t >= 0.1 at token 3, first error at token 15 -> lead 12; row 1: correct, no error located
    assert s["abs_div_sum"] == pytest.approx(4.5)
    assert s["per_row"] == [
        {"first_large": 3, "first_error": 15, "lead": 12},
        {"first_large": 0, "first_error": None, "lead": None},
    ]
    assert s["rows_with_error"] == 1 and s["large_at_or_before_error"] == 1 and s["mean_lead"] == 12


def test_negative_divergences_count_by_magnitude():
    # an element clip can leave D_t < 0: row 0's D_t at token 3 becomes -0.5; |D_t| ranks and sums as before
    # (top 3 = 2.0, |-0.5|, 0.1 of 4.5), while div_sum is the signed sum 4.5 - 1.0 = 3.5
    rows = crafted_rows()
    rows[0]["div"][3] = -0.5
    s = step_summary(rows)
    assert s["top5_mass"] == pytest.approx(2.6 / 4.5) and s["div_sum"] == pytest.approx(3.5)
    assert s["per_row"][0]["first_large"] == 3 and mass_by_relative_position(rows)[1] == pytest.approx(0.8 / 4.5)


def test_mass_by_relative_position_by_hand():
    # row 1's 20 x 0.1 fall in tenths (int(10 t / 27)) 0..7 as 3,3,3,2,3,3,2,1 tokens; row 0 adds 0.5 to tenth 1
    # (t = 3) and 2.0 to tenth 5 (t = 15): [0.3, 0.8, 0.3, 0.2, 0.3, 2.3, 0.2, 0.1, 0, 0] / 4.5
    got = mass_by_relative_position(crafted_rows())
    want = [x / 4.5 for x in (0.3, 0.8, 0.3, 0.2, 0.3, 2.3, 0.2, 0.1, 0.0, 0.0)]
    assert got == pytest.approx(want)


def test_reader_round_trip_and_its_one_line_errors(tmp_path):
    run = write_crafted_run(tmp_path / "run")
    assert recorded_steps(run) == [3, 6]
    assert load_step(run, 3) == crafted_rows(3)
    with pytest.raises(UserError, match=r"step 4 was not recorded .*recorded steps: 3, 6"):
        load_step(run, 4)
    with pytest.raises(UserError, match=r"no inspect/step_N.jsonl.gz; train with train.inspect.every"):
        recorded_steps(tmp_path)
    with pytest.raises(UserError, match="is not a directory"):
        recorded_steps(tmp_path / "missing")
    step_path(run, 9).write_bytes(gzip.compress(b"not json\n"))
    with pytest.raises(UserError, match="step_9.jsonl.gz is not a readable inspect recording"):
        load_step(run, 9)


def test_page_shades_tokens_marks_errors_and_folds_the_privileged_context():
    rows = crafted_rows()
    page = render_page(rows, step=3, run_dir="runs/x", steps_table=[])
    assert shade(2.0, 2.0) == (220, 38, 38) and shade(0.0, 2.0) == (255, 255, 255)
    assert shade(1.0, 2.0) == (238, 146, 146) and shade(-2.0, 2.0) == (37, 99, 235)
    spans = re.findall(
        r"<span class='([^']*)' data-r='(\d)' data-t='(\d+)'(?: style='background:rgb\(([^)]*)\)')?>", page
    )
    assert len(spans) == 54
    by = {(int(r), int(t)): (cls.split(), col) for cls, r, t, col in spans}
    assert by[(0, 15)] == (["tok", "clip", "err"], "220, 38, 38")  # the largest D_t: full red, clipped, the error
    # 0.5 / 2.0 of the way to red: 255 - 0.25 x 35 = 246.25, 255 - 0.25 x 217 = 200.75
    assert by[(0, 3)] == (["tok", "large"], "246, 201, 201")
    # 0.1 / 2.0: 255 - 0.05 x 35 = 253.25, 255 - 0.05 x 217 = 244.15
    assert by[(1, 0)][1] == "253, 244, 244" and by[(1, 20)] == (["tok", "off"], "")  # no loss from token 20: grey
    assert "<mark class='priv'>12+7=19. 19-15=4. \\boxed{4}</mark>" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page  # self-contained


def test_inspect_run_writes_the_page_and_png(tmp_path):
    run = write_crafted_run(tmp_path / "run")
    page, png = inspect_run(run)
    assert page == run / "inspect" / "step_6.html" and "sposd inspect: step 6" in page.read_text()
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{run}", "--step", "4"], "step 4 was not recorded"),
        (["{tmp}"], "has no inspect/step_N.jsonl.gz"),
        (["{tmp}/nope"], "is not a directory"),
        (["{run}", "--step", "x"], "argument --step: invalid int value"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    run = write_crafted_run(tmp_path / "run")
    argv = [a.format(run=run, tmp=tmp_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "sposd", "inspect", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
