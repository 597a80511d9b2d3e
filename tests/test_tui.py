"""The TUI, driven headless with Textual's Pilot: navigate, zoom, decode the next token, jump from a
check to its place, change the prompt while running, resize to 80×24, bad model path; and SVG
snapshots of each tab on the default model (tests/__snapshots__/test_tui/)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from support.models import random_model, save_hf_dir
from support.samples import sample
from textual.widgets import Input, OptionList, Static, TabbedContent

from attnscope.tui.app import AttnScopeApp
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import Navigator

# a small random model, saved in HF layout with the tiny-code tokenizer
MODEL_ARGS = dict(layers=3, vocab=1024, hidden=64, max_positions=512)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_code) -> Path:
    return save_hf_dir(random_model(**MODEL_ARGS), tmp_path_factory.mktemp("tui") / "random", tokenizer_from=tiny_code)


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await pilot.pause(0.05)


def finished(app: AttnScopeApp):
    return lambda: app.result is not None and not app.workers


PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n"


async def test_navigate_heads_and_move_the_cell_cursor(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        nav, view = app.query_one(Navigator), app.query_one(HeatmapView)
        assert [n.data[1] for n in nav.root.children] == [0, 1, 2]
        nav.focus()
        await pilot.press("down")
        assert (view.layer_idx, view.head_idx) == (0, 1)
        # the view changes inside the cursor move (no message round trip), so it is drawn in that frame
        nav.action_cursor_down()  # onto the kv1 node: no head there, the view stays
        assert (view.layer_idx, view.head_idx) == (0, 1) and nav.selected == (0, 1)
        nav.action_cursor_down()  # what ↓ runs, with no pause after it: the next frame draws head 2
        assert (view.layer_idx, view.head_idx) == (0, 2)
        assert "head 2 (kv 1)" in "".join(segment.text for segment in view.render_line(0))
        view.focus()
        await pilot.press("down", "down", "right")
        assert view.cursor == (2, 1)
        details = app.query_one("#details").info
        assert "query 2" in details and "key 1" in details and "scaled score" in details and "allowed" in details
        await pilot.press("right", "right")  # key 3 is in the future of query 2
        assert "masked" in app.query_one("#details").info
        await pilot.press("l", "g")
        assert view.log_scale and view.group
        await pilot.press("]")  # from the heatmap pane: the next head ...
        assert (view.layer_idx, view.head_idx) == (0, 3) and nav.selected == (0, 3)
        await pilot.press("]")  # ... on into the next layer
        assert (view.layer_idx, view.head_idx) == (1, 0)
        await pilot.press("}", "}")
        assert (view.layer_idx, view.head_idx) == (0, 0)  # the same head, layers wrap around
        await pilot.press("[")
        assert (view.layer_idx, view.head_idx) == (2, 3)


async def test_zoom_into_a_long_prompt_and_back(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt="x = 1\n" * 60, device="cpu")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        view.focus()
        assert not view.current().exact  # 180 tokens do not fit: pooled overview
        await pilot.press("down", "down", "right", "plus")
        assert view.zoomed and view.current().exact
        assert "query" in app.query_one("#details").info
        await pilot.press("minus")
        assert not view.zoomed and not view.current().exact


async def test_next_token_grows_the_heatmap_by_one_row(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        before = len(app.result.ids)
        expected_next = int(app.result.logits[-1].argmax())
        await pilot.press("n")
        await wait_for(pilot, lambda: app.result is not None and len(app.result.ids) == before + 1)
        assert app.result.ids[-1] == expected_next
        assert app.query_one(HeatmapView).current().weights.shape[0] == before + 1


def nan_model_dir(tmp_path):
    """A random model with one NaN in layer 1's k_proj, saved with tiny-code's tokenizer."""
    model = random_model(**MODEL_ARGS)
    with torch.no_grad():
        model.net.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    return save_hf_dir(model, tmp_path / "nan", tokenizer_from=sample("tiny-code"))


async def test_a_failing_check_jumps_to_its_layer_and_head(tmp_path):
    app = AttnScopeApp(model=str(nan_model_dir(tmp_path)), prompt=list(range(1, 25)), device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        check = next(c for c in app.result.checks if c.name == "nan")
        assert not check.passed and check.where["layer"] == 1
        await pilot.press("3")
        checks = app.query_one("#checks-list", OptionList)
        assert app.focused is checks  # the tab's key focuses its pane
        assert checks.highlighted == 0 and checks.highlighted_option.id == "nan"  # the nan check is first
        await pilot.press("enter")
        await pilot.pause()
        view = app.query_one(HeatmapView)
        assert app.query_one(TabbedContent).active == "heatmap"
        assert (view.layer_idx, view.head_idx) == (1, check.where["head"])
        glyphs = [
            leaf.label.plain[0] for kv in app.query_one(Navigator).root.children[1].children for leaf in kv.children
        ]
        assert "✖" in glyphs


async def test_changing_the_prompt_while_running_cancels_the_old_run(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt="import os\n" * 40, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause(0.2)
        app.query_one("#prompt").value = "def f(x):"
        app.query_one("#prompt").focus()
        await pilot.press("enter")
        await wait_for(pilot, finished(app))
        assert "".join(app.result.tokens[1:]) == "def f(x):"


async def test_resize_to_80x24_and_bad_model_path(model_dir, tmp_path):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        for size in ((80, 24), (60, 16), (200, 50), (80, 24)):
            await pilot.resize_terminal(*size)
            await wait_for(pilot, lambda size=size: app.size == size and view.size.width < size[0])
            shown = view.current()
            assert view.cursor[0] < shown.weights.shape[0] and view.cursor[1] < shown.weights.shape[1]
            lines = ["".join(s.text for s in view.render_line(y)) for y in range(view.size.height)]
            assert all(len(line) <= view.size.width for line in lines) and "layer" in lines[0]
        for tab, pane in zip("12345", ("heatmap", "mask", "checks", "diff", "tokens"), strict=True):
            await pilot.press(tab)
            await wait_for(pilot, lambda pane=pane: app.query_one(TabbedContent).active == pane)
    broken = AttnScopeApp(model=str(tmp_path / "missing"), prompt="x", device="cpu")
    async with broken.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: broken.query_one("#error").has_class("shown"))
        assert "not found" in str(broken.query_one("#error", Static).render())
        assert broken.is_running
        view = broken.query_one(HeatmapView)  # the map says the run failed, not that it waits for it
        await wait_for(pilot, lambda: "the run failed" in "".join(s.text for s in view.render_line(0)))


async def test_help_and_screenshot(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        app.query_one(HeatmapView).focus()
        await pilot.press("question_mark")
        assert app.screen.__class__.__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.press("s")
        await pilot.pause()
        assert list(tmp_path.glob("*.svg"))


def on_screen(app) -> list[str]:
    """The terminal's lines as drawn now, from a screenshot (what was drawn, not what would be)."""
    import html
    import re

    from rich.cells import cell_len

    found = re.findall(
        r'<text[^>]* x="([\d.]+)" y="[\d.]+" textLength="([\d.]+)" '
        r'clip-path="url\(#[\w-]+-line-(\d+)\)">(.*?)</text>',
        app.export_screenshot(),
    )
    cells = [
        (float(x), float(length), int(line), html.unescape(text).replace("\xa0", " "))
        for x, length, line, text in found
    ]
    per_cell = next(length / cell_len(text) for _, length, _, text in cells if text.strip())
    lines: dict[int, list[str]] = {}
    for x, _, line, text in cells:
        column = round(x / per_cell)
        row = lines.setdefault(line, [])
        row.extend(" " * (column + len(text) - len(row)))
        row[column : column + len(text)] = text
    return ["".join(lines.get(n, [])) for n in range(max(lines, default=-1) + 1)]


def rendered(widget) -> list[str]:
    """The lines a widget draws now, as text."""
    return ["".join(segment.text for segment in widget.render_line(y)) for y in range(widget.size.height)]


async def test_text_typed_after_enter_stays_in_the_prompt(model_dir, tmp_path, monkeypatch):
    """After enter the cursor stays in the prompt: what is typed next is text, never `s` (an SVG in
    the current directory) or `n` (one more decoded token). Tabbing in keeps the text."""
    monkeypatch.chdir(tmp_path)
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    notes = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(message))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        prompt = app.query_one("#prompt", Input)
        prompt.value = "def f(x):"
        prompt.focus()
        await pilot.press("enter")
        await pilot.press(*"sn")
        await wait_for(pilot, finished(app))
        assert app.focused is prompt and prompt.value == "def f(x):sn"
        assert "".join(app.result.tokens[1:]) == "def f(x):"  # no token decoded by `n`
        assert not list(tmp_path.iterdir())  # no screenshot written by `s`
        await pilot.press("escape")  # leaves the prompt for the open tab's pane
        assert app.focused is app.query_one(HeatmapView)
        await pilot.press("s")
        saved = list(tmp_path.glob("*.svg"))
        assert len(saved) == 1 and any(str(saved[0]) in note for note in notes)  # it says where
        app.query_one(Navigator).focus()
        await pilot.press("tab")  # from the navigator into the prompt: its text is kept, not selected
        assert app.focused is prompt
        await pilot.press("!")
        assert prompt.value == "def f(x):sn!"


async def test_a_multi_line_prompt_is_one_line_with_backslash_n(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt="def f(x):\n    return x", device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        prompt = app.query_one("#prompt", Input)
        assert prompt.value == "def f(x):\\n    return x"
        prompt.focus()
        await pilot.press("end", "space", "enter")
        await wait_for(pilot, finished(app))
        assert "".join(app.result.tokens[1:]) == "def f(x):\n    return x "


async def test_tab_keys_focus_their_pane(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        for key, pane in zip(
            "23451", ("mask-view", "checks-list", "diff-view", "tokens-table", "heatmap-view"), strict=True
        ):
            await pilot.press(key)
            assert app.focused is app.query_one(f"#{pane}"), key
        await pilot.press("5", "down", "down")  # the arrows move in the Tokens table, not the hidden map
        assert app.query_one("#tokens-table").cursor_row == 2 and view.cursor == (0, 0)


async def test_a_resize_recomputes_the_heatmap_and_its_title(model_dir):
    """Started at 80×24 the map is pooled; at 160×48 the same prompt gets exact cells with token labels
    (as a fresh start at that size), and back at 80×24 the overview again — never a stale title over
    a stretched map."""
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        T = len(app.result.ids)
        for size, exact in (((80, 24), False), ((160, 48), True), ((80, 24), False)):
            await pilot.resize_terminal(*size)
            await wait_for(pilot, lambda size=size: app.size == size and view.size.width < size[0])
            await pilot.pause()
            shown = view.current()
            lines = on_screen(app)
            at, column = next(
                (n, line.index("layer 0 · head")) for n, line in enumerate(lines) if "layer 0 · head" in line
            )
            title = lines[at][column:] + lines[at + 1][column:]  # it may wrap
            assert shown.exact is exact and ("exact" in title) is exact, (size, title)
            rows, cols = shown.weights.shape
            assert (f"({T}×{T})" if exact else f"({T}×{T} → {rows}×{cols}, max-pooled)") in title, (size, title)
            fresh = view.compute_view(app.result, view.layer_idx, view.head_idx, False, (0, 0), view._capacity())
            assert fresh.weights.shape == shown.weights.shape


async def test_80x24_collapses_the_navigator_and_wraps_panels(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        view, details = app.query_one(HeatmapView), app.query_one("#details")
        narrow = view.size.width
        await pilot.press("b")  # the navigator collapses: the map gets the width
        await wait_for(pilot, lambda: view.size.width > narrow + 25)
        assert not app.query_one("#left").display
        await pilot.press("b")
        await wait_for(pilot, lambda: view.size.width == narrow)
        view.focus()
        await pilot.press("down", "plus")  # exact cells: the details name the score
        await wait_for(pilot, lambda: "scaled score" in details.info)
        await pilot.pause()
        lines = rendered(details)
        assert all(len(line.rstrip()) <= details.size.width for line in lines)
        text = " ".join(lines)
        score = details.info.split("q·k·scale ")[1].split()[0]
        assert score in text and "mask:" in text  # wrapped, not cut before the score
        status = app.query_one("#status", Static)
        assert str(status.render()).startswith(f"{len(app.result.ids)} tokens · 3 layers · checks:")
        assert status.size.width >= len(str(status.render()))  # the finished run's status has the line


async def test_checks_tab_reads_at_80_and_120_columns(tmp_path):
    app = AttnScopeApp(model=str(nan_model_dir(tmp_path)), prompt=list(range(1, 25)), device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        checks = app.query_one("#checks-list", OptionList)
        for size in ((80, 24), (120, 36)):
            await pilot.resize_terminal(*size)
            await pilot.press("3")
            await wait_for(pilot, lambda size=size: app.size == size and checks.size.width > 0)
            await pilot.pause()
            lines = [line.rstrip() for line in rendered(checks)]
            text = " ".join(lines).split()
            for check in app.result.checks[:2]:  # the first entries are on screen
                assert check.name in text and all(word in text for word in check.message.split()), size
                for key, value in (check.where or {}).items():
                    if key in ("layer", "head", "position", "stage"):
                        assert any(f"{key} {value}" in line for line in lines), (size, key, lines)


async def test_without_color_the_heatmap_uses_the_shade_ramp(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")  # Textual then draws grays; the map must still read
    app = AttnScopeApp(
        model=str(save_hf_dir(random_model(**MODEL_ARGS), tmp_path / "m")), prompt=list(range(1, 9)), device="cpu"
    )
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        await pilot.pause()
        lines = rendered(view)
        assert not any("▀" in line for line in lines)
        assert any("·" in line and line[:4].strip() == "0" for line in lines)  # a query row: masked keys
        assert any(" ░▒▓█" in line for line in lines)


async def test_without_a_prompt_nothing_runs_and_the_screen_says_what_to_do(model_dir, monkeypatch):
    """No --prompt: no worker, no bar, a map placeholder that says what to do; at 80 columns the
    status line and the prompt's placeholder are whole; `q` typed into the prompt says how to quit."""
    app = AttnScopeApp(model=str(model_dir), device="cpu")
    notes = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(message))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.workers and app.session.loaded is None  # nothing loads, nothing runs
        assert not app.query_one("#progress").display
        assert "no prompt yet" in " ".join(rendered(app.query_one(HeatmapView)))
        status, prompt = app.query_one("#status", Static), app.query_one("#prompt", Input)
        assert "ctrl+c quits" in str(status.render()) and status.size.width >= len(str(status.render()))
        assert len(prompt.placeholder) <= prompt.content_size.width
        assert app.focused is prompt
        await pilot.press("q")
        assert prompt.value == "q" and app.is_running
        assert any("ctrl+c quits" in note for note in notes)


async def test_help_at_80x24_fits_says_how_to_close_and_aligns(model_dir):
    from attnscope.tui.help import KEYS, keys_text

    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        app.query_one(HeatmapView).focus()
        await pilot.press("question_mark")
        await pilot.pause()
        box = app.screen.query_one("VerticalScroll")
        assert "escape" in box.border_subtitle and box.max_scroll_y == 0  # all of it on screen
        columns = {
            line.index(what) for line, (keys, what) in zip(keys_text().plain.splitlines(), KEYS, strict=True) if keys
        }
        assert len(columns) == 1  # every description starts in the same column
        await pilot.press("escape")
        assert app.screen.__class__.__name__ != "HelpScreen"


async def test_stepping_layers_keeps_one_layer_open_and_the_head_in_view(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        nav = app.query_one(Navigator)
        app.query_one(HeatmapView).focus()
        for step, (layer, head) in (("}", (1, 0)), ("}", (2, 0)), ("]", (2, 1)), ("[", (2, 0)), ("{", (1, 0))):
            await pilot.press(step)
            assert nav.selected == (layer, head)
            assert [n.data[1] for n in nav.root.children if n.is_expanded] == [layer]
            top = nav.scroll_offset.y
            assert top <= nav.cursor_line < top + nav.scrollable_content_region.height, step


async def test_a_small_map_uses_the_room_at_80x24_and_its_colorbar_sits_under_it(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=list(range(1, 13)), device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        await pilot.pause()
        lines = rendered(app.query_one(HeatmapView))
        cells = [line for line in lines if "▀" in line]
        start, width = cells[0].index("▀"), cells[0].count("▀")
        assert width >= 2 * 12  # 12 keys, two columns or more each
        bar = next(line for line in lines if "linear" in line)
        ramp = bar[: bar.index(" linear")]
        ramp_start = len(ramp.rstrip("█"))
        assert ramp_start >= start and len(ramp) <= start + width  # under the map, not wider than it
        assert "masked" in bar and "NaN/Inf" in bar


async def test_tokens_tab_fits_80_columns(model_dir):
    app = AttnScopeApp(model=str(model_dir), prompt=list(range(1, 6)), device="cpu")  # the continuation in view
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, finished(app))
        await pilot.press("5")
        table = app.query_one("#tokens-table")
        await wait_for(pilot, lambda: table.size.width > 0)
        await pilot.pause()
        assert table.max_scroll_x == 0  # no sideways scroll, so no scrollbar over the last row
        assert any(line.rstrip().endswith("n adds it") for line in rendered(table))


async def test_the_map_and_navigator_come_before_the_checks(model_dir, monkeypatch):
    """The heatmap, the navigator's heads and the Tokens tab are there while the checks run (held
    here until the views are checked), and the status line says what still runs."""
    import threading

    from attnscope import scope

    release, real = threading.Event(), scope.run_checks

    def held(*args, **kwargs):
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(scope, "run_checks", held)
    app = AttnScopeApp(model=str(model_dir), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        try:
            view = app.query_one(HeatmapView)
            await wait_for(pilot, lambda: view.result is not None)
            await wait_for(pilot, lambda: "row statistics" in str(app.query_one("#status", Static).render()))
            assert app.workers and not app.result.checks  # the checks have not run
            assert "layer 0 · head 0" in rendered(view)[0]
            assert len(app.query_one(Navigator).root.children) == 3
            assert app.query_one("#tokens-table").row_count == len(app.result.ids) + 8
        finally:
            release.set()
        await wait_for(pilot, finished(app))
        await wait_for(pilot, lambda: "all passed" in str(app.query_one("#status", Static).render()))
        assert len(app.result.checks) == 5


async def test_a_switch_shows_the_head_drawn_ahead_as_it_would_draw_it(model_dir):
    """While the app is idle the map pane draws the heads next to the one shown, so that a switch to
    one only shows it: a switch to a neighbour takes those strips, and they are the strips the pane
    draws for that head from scratch (a step to another layer draws it then)."""
    app = AttnScopeApp(model=str(model_dir), prompt="x = 1\n" * 40, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, finished(app))
        view = app.query_one(HeatmapView)
        view.focus()
        await pilot.press("]")  # the overviews were computed after the first map: from here, heads are drawn ahead
        for key, neighbour in (("]", True), ("]", True), ("[", True), ("}", False), ("[", True)):
            await wait_for(pilot, lambda: not app.workers)
            ahead = [strips for strips in view._ahead.values()]
            await pilot.press(key)
            view.render_line(0)  # the frame's strips (already drawn unless the frame is still to come)
            shown = view._strips
            assert any(shown is strips for strips in ahead) == neighbour, key
            drawn = view._strips_of(view.renderable(), view._look())
            assert [list(strip) for strip in shown] == [list(strip) for strip in drawn], key


# ---- appearance -------------------------------------------------------------------------------

needs_tiny = pytest.mark.usefixtures("tiny_code")  # the committed sample: missing, the test fails


async def _ready(pilot):
    await wait_for(pilot, finished(pilot.app))
    pilot.app.query_one(HeatmapView).focus()
    await pilot.pause()


def noise_free_diff(monkeypatch):
    """Make the comparing checks report differences under tolerance as exactly 0: their size (a few
    1e-7 to 1e-6) depends on the CPU, the thread count and the BLAS, and a snapshot must not. What is
    over tolerance is kept (the snapshot model has none)."""
    from attnscope.inspector import checks

    real_diff = checks.diff

    def diff(actual, reference, tol, rows=None, limit=None):
        d = real_diff(actual, reference, tol, rows, limit)
        head_over = d.bad_rows.any(-1).any(0)  # (H,)
        return checks.Diff(
            d.max_abs * head_over,
            d.max_rel * head_over,
            d.bad_rows,
            None if d.row_max is None else d.row_max * d.bad_rows,
        )

    monkeypatch.setattr(checks, "diff", diff)


@needs_tiny
@pytest.mark.parametrize("tab", ["heatmap", "mask", "checks", "diff", "tokens"])
def test_tab_snapshots(tab, snap_compare, monkeypatch):
    noise_free_diff(monkeypatch)
    app = AttnScopeApp(model="tiny-code", prompt="def fibonacci(n):", device="cpu")

    async def run_before(pilot):
        await _ready(pilot)  # the run, its checks and the overview worker are done
        await pilot.press(str(["heatmap", "mask", "checks", "diff", "tokens"].index(tab) + 1))
        await wait_for(pilot, lambda: app.query_one(TabbedContent).active == tab)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 36), run_before=run_before)


@needs_tiny
async def test_the_app_opens_on_the_most_focused_head_as_run_draws():
    """The first map is the head `attnscope run` draws by default (`pick_head`); a new prompt keeps the
    head the person chose."""
    from attnscope.inspector.report import pick_head

    app = AttnScopeApp(model="tiny-code", prompt="def fibonacci(n):", device="cpu", max_new_tokens=0)
    async with app.run_test(size=(120, 36)) as pilot:
        await _ready(pilot)
        view = app.query_one(HeatmapView)
        best = pick_head(app.result.report())[:2]
        assert (view.layer_idx, view.head_idx) == best and best != (0, 0)
        app.show_head(2, 3)
        first = app.result
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.result is not first and view.result is app.result and finished(app)())
        assert (view.layer_idx, view.head_idx) == (2, 3)
