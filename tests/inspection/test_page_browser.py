"""The page as a user sees it: a crafted run's page rendered by headless Chromium (Debian's `chromium`).

- The DOM after the page's script ran, opened with a token pinned (`#t=0.15`): both rows, every token with its
  shade, the clipped / error / first-large marks, and the side panel filled with that token's alternatives.
- A screenshot: the largest divergence is painted full red (rgb 220, 38, 38) as a token-sized box below the legend's
  swatch, and the two lighter shades of the crafted values (0.5 and 0.1 of a 2.0 scale) appear.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sposd.inspect.app import inspect_run
from tests.inspection.crafted import write_crafted_run

pytestmark = pytest.mark.slow

BROWSER = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium binary (apt-get install chromium)")


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def page(tmp_path) -> Path:
    out, _ = inspect_run(write_crafted_run(tmp_path / "run"), step=3, with_png=False)
    return out


@needs_browser
def test_dom_after_the_script_shows_rows_shades_and_the_pinned_token(page, tmp_path):
    r = _chromium(tmp_path, "--dump-dom", f"{page.as_uri()}#t=0.15")
    dom = r.stdout
    assert r.returncode == 0 and "<section" in dom, r.stderr[-2000:]
    assert len(re.findall(r'<section class="row (?:wrong|correct)"', dom)) == 2
    tokens = re.findall(r'<span class="(tok[^"]*)" data-r="(\d)" data-t="(\d+)"(?: style="([^"]*)")?', dom)
    assert len(tokens) == 54
    by = {(int(r_), int(t)): (cls.split(), style) for cls, r_, t, style in tokens}
    assert by[(0, 15)][0] == ["tok", "clip", "err", "sel"] and "rgb(220, 38, 38)" in by[(0, 15)][1]  # pinned
    assert by[(0, 3)] == (["tok", "large"], "background:rgb(246, 201, 201)")
    assert by[(1, 25)][0] == ["tok", "off"]
    detail = dom[dom.index('id="detail"') :]
    assert "row 0, token 15" in detail and "<code>4</code></td><td>0.9000" in detail  # teacher's top alternative
    assert "<code>5</code></td><td>0.6000" in detail  # the student's


@needs_browser
def test_screenshot_paints_the_largest_divergence_full_red(page, tmp_path):
    import numpy as np
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,800", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def boxes(rgb) -> list[tuple[int, int]]:
        """(height, width) of each run of rows holding that exact colour (the boxes are separated vertically)."""
        ys, xs = np.nonzero((px == np.array(rgb)).all(-1))
        out, start = [], 0
        for i in range(1, len(ys) + 1):
            if i == len(ys) or ys[i] > ys[i - 1] + 1:
                sel = slice(start, i)
                out.append((ys[sel].max() - ys[sel].min() + 1, xs[sel].max() - xs[sel].min() + 1))
                start = i
        return out

    red = boxes((220, 38, 38))
    assert red[0] == (12, 22), red  # the legend's swatch (22 x 12 px), at the top
    assert any(h > w >= 5 for h, w in red[1:]), red  # token 15 of row 0: a glyph-wide, line-high box
    assert boxes((246, 201, 201)) and boxes((253, 244, 244))  # D_t 0.5 and 0.1 of the 2.0 scale
    assert boxes((37, 99, 235))  # the legend's negative end
