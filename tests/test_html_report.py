"""The interactive HTML report (`attnscope.htmlview`): what the file holds, the commands that write
it, and, in a real headless Chromium (tests/support/browser.py; skipped where none is installed),
that it renders without console errors, that clicking a head shows its map, that hovering a cell
shows the weight `Result.attention` gives there, and that a failing check links to its head."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from support.browser import Browser, chromium
from support.models import random_model
from typer.testing import CliRunner

import attnscope
from attnscope.cli import app
from attnscope.htmlview import (
    CODE_MASKED,
    CODE_NONFINITE,
    EXACT_CELLS,
    WINDOW,
    Place,
    decode_log,
    encode_log,
    exact_regions,
    result_page,
)

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def fibonacci(n):\n    return n"
needs_chromium = pytest.mark.skipif(chromium() is None, reason="no chromium installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def tiny_result(single_thread):
    model = attnscope.load_model("tiny-code")
    return attnscope.Scope(model, backend="eager").run(PROMPT, max_new_tokens=2, roles=True)


def test_byte_encoding_keeps_weights_within_three_percent_and_marks_masked_and_nonfinite():
    w = np.array([[0.0, 1e-7, 1e-6, 0.003, 0.5, 1.0, np.nan, 0.2]])
    allowed = np.array([[True] * 7 + [False]])
    codes = encode_log(w, allowed)
    assert codes[0, 6] == CODE_NONFINITE and codes[0, 7] == CODE_MASKED
    back = decode_log(codes)
    assert back[0, 0] == back[0, 1] == 0 and back[0, 7] == -1 and np.isnan(back[0, 6])
    np.testing.assert_allclose(back[0, 2:6], w[0, 2:6], rtol=0.03)


def test_exact_regions_come_first_for_the_places_named_and_stay_within_the_budget():
    shapes = [(4096, 4096)] * 30
    regions = exact_regions(shapes, 9, [Place(3, 2, 1000), Place(7, 1)], EXACT_CELLS)
    assert (regions[0].layer, regions[0].head, regions[0].q1) == (3, 2, 1001)
    assert (regions[1].layer, regions[1].head, regions[1].q1) == (7, 1, 4096)
    assert sum(r.cells for r in regions) <= EXACT_CELLS and all(r.cells == WINDOW * WINDOW for r in regions)
    small = exact_regions([(12, 12)] * 4, 8, [], EXACT_CELLS)  # a short prompt: every head whole
    assert len(small) == 32 and all(r.cells == 144 for r in small)


def test_the_page_is_one_self_contained_file(tiny_result):
    page = result_page(tiny_result)
    assert page.startswith("<!DOCTYPE html>") and "DecompressionStream" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<link" not in page and "@import" not in page
    frame = tiny_result._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;!DOCTYPE html&gt;" in frame


def test_run_check_and_compare_write_the_report_and_html_terminal_the_capture(tmp_path, single_thread):
    runner = CliRunner()
    report, capture = tmp_path / "run.html", tmp_path / "terminal.html"
    args = ["-p", "def f(x):", "-n", "2", "--quiet"]
    out = runner.invoke(app, ["run", *args, "--html", str(report), "--html-terminal", str(capture)])
    assert out.exit_code == 0, out.output
    assert 'id="attnscope-data"' in report.read_text() and "attnscope-data" not in capture.read_text()
    assert "<html" in capture.read_text().lower()
    out = runner.invoke(app, ["check", "-p", "def f(x):", "--checks", "nan", "--html", str(tmp_path / "c.html")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "c.html").read_text().count('"name":"prompt 0') == 1
    out = runner.invoke(
        app, ["compare", "tiny-code", "tiny-code", "-p", "def f(x):", "--html", str(tmp_path / "d.html")]
    )
    assert out.exit_code == 0, out.output
    assert '"measure":"|ΔP|"' in (tmp_path / "d.html").read_text()


# ---- in a real browser -------------------------------------------------------------------------------


def cell_point(browser: Browser, canvas: str, row: int, col: int) -> tuple[float, float]:
    """The viewport point at the center of cell (row, col) of a map's canvas."""
    rows, cols = browser.evaluate(
        f"[document.querySelector('{canvas}').height, document.querySelector('{canvas}').width]"
    )
    return browser.center(canvas, (col + 0.5) / cols, (row + 0.5) / rows)


@needs_chromium
def test_in_chromium_a_head_clicked_shows_its_map_and_hover_gives_the_exact_weight(tmp_path, tiny_result):
    path = tmp_path / "run.html"
    path.write_text(result_page(tiny_result))
    with Browser() as browser:
        browser.open(path)
        browser.click('#overview td[data-layer="2"][data-head="5"]')
        assert browser.evaluate("document.getElementById('head-title').textContent").startswith(
            "layer 2 · head 5 (kv 1)"
        )
        assert browser.evaluate("document.querySelectorAll('#group canvas').length") == 4  # the kv group
        expected = tiny_result.attention(2, 5)
        for row, col in ((9, 4), (14, 0), (6, 6)):
            browser.mouse("move", *cell_point(browser, "#map", row, col))
            hover = browser.evaluate("({...document.getElementById('hover').dataset})")
            assert (hover["layer"], hover["head"], hover["row"], hover["key"]) == ("2", "5", str(row), str(col))
            assert hover["exact"] == "true" and float(hover["value"]) == pytest.approx(
                float(expected[row, col]), abs=1e-7
            )
            tokens = tiny_result.tokens
            text = browser.evaluate("document.getElementById('hover').textContent")
            assert f"q {row} " in text and f"k {col} " in text and tokens[col].strip()[:1] in text
        browser.mouse("move", *cell_point(browser, "#map", 1, 9))  # above the diagonal
        assert browser.evaluate("document.getElementById('hover').dataset.value") == "-1"  # masked
        browser.click("#log")
        assert browser.evaluate("window.attnscope.state.log") is True
        assert browser.errors() == []


@needs_chromium
def test_in_chromium_a_failing_check_links_to_its_head_and_position(tmp_path, single_thread):
    path = tmp_path / "broken.html"
    model = str(ROOT / "sample_models" / "broken" / "nan-k-proj")  # NaN in layer 2's k_proj
    out = CliRunner().invoke(
        app, ["check", "-m", model, "-p", "def fibonacci(n):", "--checks", "nan,masked_rows", "--html", str(path)]
    )
    assert out.exit_code == 1, out.output
    with Browser() as browser:
        browser.open(path)
        first = browser.evaluate("document.querySelector('#checks li').className")
        assert first == "fail"  # failures first
        browser.click("#checks li.fail a")
        assert browser.evaluate("[document.body.dataset.layer, document.body.dataset.head]") == ["2", "4"]
        assert browser.evaluate("document.getElementById('mark').dataset.position") == "0"
        browser.mouse("move", *cell_point(browser, "#map", 3, 1))
        assert browser.evaluate("document.getElementById('hover').dataset.value") == "NaN"  # marked red
        assert browser.errors() == []


@needs_chromium
def test_in_chromium_a_long_prompt_shows_pooled_maps_and_an_exact_window(tmp_path, single_thread):
    model = random_model(layers=2, vocab=64, hidden=32, max_positions=1024, heads=4, kv_heads=2)
    ids = torch.randint(4, 64, (600,), generator=torch.Generator().manual_seed(0)).tolist()
    result = attnscope.Scope(model, backend="eager").run(ids, max_new_tokens=0, checks="none")
    path = tmp_path / "long.html"
    path.write_text(result_page(result, layer=1, head=3))
    with Browser() as browser:
        browser.open(path)
        assert browser.evaluate("[document.getElementById('map').width, document.getElementById('exact').width]") == [
            128,
            WINDOW,
        ]
        browser.mouse("move", *cell_point(browser, "#map", 127, 0))
        assert "(max)" in browser.evaluate("document.getElementById('hover').textContent")
        browser.mouse("move", *cell_point(browser, "#exact", WINDOW - 1, WINDOW - 2))
        hover = browser.evaluate("({...document.getElementById('hover').dataset})")
        assert (hover["row"], hover["key"]) == ("599", str(600 - 2))
        assert float(hover["value"]) == pytest.approx(float(result.attention(1, 3)[599, 598]), abs=1e-7)
        assert browser.errors() == []


@needs_chromium
def test_in_chromium_compare_shows_the_probability_difference_of_a_head(tmp_path, single_thread):
    a, b = attnscope.load_model("tiny-code"), attnscope.load_model("tiny-code-q4")
    from attnscope.scope import compare

    comparison = compare(a, b, "def f(x):", backend="eager")
    path = tmp_path / "compare.html"
    frame = comparison._repr_html_()  # the notebook's view: the page in an iframe's srcdoc
    path.write_text(html.unescape(frame.split('srcdoc="', 1)[1].rsplit('" style=', 1)[0]))
    with Browser() as browser:
        browser.open(path)
        browser.click('#overview td[data-layer="1"][data-head="3"]')
        browser.mouse("move", *cell_point(browser, "#map", 4, 2))
        hover = browser.evaluate("({...document.getElementById('hover').dataset})")
        assert float(hover["value"]) == pytest.approx(float(comparison.attention(1, 3)[4, 2]), abs=1e-7)
        assert "|ΔP|" in browser.evaluate("document.getElementById('hover').textContent")
        assert browser.errors() == []


def test_the_pooled_maps_are_the_dense_maps_pooled_band_by_band(single_thread, monkeypatch):
    """The page's overviews are `attention_pooled`'s: the dense matrix max- (or mean-) pooled, computed
    a band of several bins at a time (bands made small here, so that there are many)."""
    from attnscope.inspector import capture
    from attnscope.pooling import pool2d

    monkeypatch.setattr(capture, "STATS_CHUNK_ELEMENTS", 4096)  # 300 keys: a few bins a band
    model = random_model(layers=1, vocab=64, hidden=32, max_positions=512, heads=4, kv_heads=2)
    ids = torch.randint(4, 64, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    result = attnscope.Scope(model, backend="eager").run(ids, max_new_tokens=0, checks="none")
    dense = result.attention(0, 3).numpy()
    for reduce in ("max", "mean"):
        want, _, _ = pool2d(dense, 128, 128, reduce)
        np.testing.assert_allclose(result.attention_pooled(0, 3, 128, 128, reduce), want, rtol=1e-5, atol=1e-7)
