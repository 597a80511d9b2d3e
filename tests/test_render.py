"""Rendering: heatmaps, mask grids and diff maps read at a glance, fit the width, and keep a stable
look (text snapshots at fixed width with a fixed seed, in tests/__snapshots__/)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from attnscope import masks
from attnscope.render.diffmap import DiffMap, PositionDiff, RangeMap
from attnscope.render.heatmap import Heatmap, TopKeys
from attnscope.render.maskgrid import TileMap, mask_view

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render(renderable, width: int = 80, color: bool = False) -> str:
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=color,
        color_system="truecolor" if color else None,
        highlight=False,
        legacy_windows=False,
    )
    console.print(renderable)
    return console.file.getvalue()


def causal_weights(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    allowed = np.tril(np.ones((n, n), dtype=bool))
    scores = np.where(allowed, rng.normal(size=(n, n)) * 2, -np.inf)
    w = np.exp(scores - scores.max(1, keepdims=True))
    return (w / w.sum(1, keepdims=True)).astype(np.float32), allowed


TOKENS = ["<s>", "def", " fib", "(", "n", "):", "\n", "   ", " if", " n", " <", " 2", ":"]


def test_heatmap_without_color_snapshot(snapshot):
    w, a = causal_weights(len(TOKENS))
    text = render(Heatmap(w, a, TOKENS, TOKENS, title="layer 1 · head 3"))
    assert "·" in text and "█" in text  # masked cells and full weights
    assert "linear 0 … " in text
    assert text == snapshot


def test_heatmap_in_color_uses_half_blocks_viridis_and_gray_masks():
    labels = [f"t{i}" for i in range(40)]
    w, a = causal_weights(40)
    text = render(Heatmap(w, a, labels, labels, title="t"), color=True)
    plain = ANSI.sub("", text)
    n_rows = sum(1 for line in plain.splitlines() if "│" in line)
    assert n_rows == 20  # two query rows per line
    assert "▀" in plain
    assert "48;2;58;58;58" in text  # masked gray as a background (lower half)
    assert "38;2;68;1;84" in text  # viridis' dark end, #440154 exactly, for tiny weights (foreground, upper half)


def test_short_maps_are_magnified_into_square_cells():
    w, a = causal_weights(len(TOKENS))
    plain = ANSI.sub("", render(Heatmap(w, a, TOKENS, TOKENS, title="t"), width=120, color=True))
    rows = [line for line in plain.splitlines() if "▀" in line and "masked" not in line]
    assert len(rows) == 2 * len(TOKENS)  # 4 columns × 4 half-lines per cell
    assert rows[0].count("▀") == 4 * len(TOKENS)
    assert rows[0].split()[1] == "<s>" and rows[1].split() == [rows[1].strip()]  # label once per query row


def cell_rows(text: str) -> dict[int, str]:
    """The cells of each query row of a heatmap rendered without color, by query position (the legend
    prints "!" too, so a NaN has to be looked for in the cells)."""
    width = Heatmap.label_width(color=False)  # position and token label left of the cells
    return {int(line[:4]): line[width:] for line in text.splitlines() if line[:4].strip().isdigit()}


def test_heatmap_log_scale_and_nan():
    w, a = causal_weights(6)
    clean = Heatmap(w.copy(), a, TOKENS[:6], TOKENS[:6], log=True)
    w[4, 2] = np.nan
    heatmap = Heatmap(w, a, TOKENS[:6], TOKENS[:6], log=True)
    text = render(heatmap)
    assert "log " in text
    rows, clean_rows = cell_rows(text), cell_rows(render(clean))
    assert sorted(rows) == sorted(clean_rows) == list(range(6))
    assert not any("!" in cells for cells in clean_rows.values())
    # the NaN cell (query 4, key 2) is drawn "!", every other cell as without the NaN
    assert rows[4][2] == "!"
    assert rows == {**clean_rows, 4: clean_rows[4][:2] + "!" + clean_rows[4][3:]}
    # in color the NaN cell is red; the legend's red swatch is not on a line of cells
    red = "2;255;32;32"  # NONFINITE_COLOR #ff2020 as a truecolor fore- or background
    colored = render(heatmap, color=True)
    cell_lines = [line for line in colored.splitlines() if "▀" in line and "masked" not in ANSI.sub("", line)]
    red_lines = [line for line in cell_lines if red in line]
    assert red_lines and ANSI.sub("", red_lines[0]).startswith("   4 ")
    assert not any(
        red in line
        for line in render(clean, color=True).splitlines()
        if "▀" in line and "masked" not in ANSI.sub("", line)
    )


def test_long_maps_are_pooled_and_say_so():
    w, a = causal_weights(300)
    text = render(Heatmap(w, a, [str(i) for i in range(300)], [str(i) for i in range(300)], max_lines=20))
    assert "300×300 → 20×" in text and "max-pooled" in text
    assert len(text.splitlines()) <= 20 + 4
    assert max(cell_len(line) for line in text.splitlines()) <= 80


def test_top_keys_bar_list():
    w, _ = causal_weights(len(TOKENS))
    text = render(TopKeys(w[8], TOKENS, 8, TOKENS[8], k=3))
    lines = text.splitlines()
    assert lines[0].startswith("query 8 ␣if: top 3 keys")
    weights = [float(line.split()[2]) for line in lines[1:]]
    assert weights == sorted(weights, reverse=True) and weights[0] == pytest.approx(w[8].max(), abs=1e-4)


def test_mask_grid_snapshot(snapshot):
    spec = masks.causal() & masks.sliding_window(4) & masks.padding([13], "left", total=16)
    text = render(mask_view(spec, 12, 16, title=repr(spec)))
    assert "×" not in text.splitlines()[-1] or "row with no key" in text
    assert text == snapshot


def test_tile_map_snapshot(snapshot):
    tiles = masks.causal().blocks(16, 16, 4, 4)
    assert render(TileMap(tiles.states[0, 0].numpy(), 4, 4, tiles.sparsity)) == snapshot


def test_diff_map_marks_heads_over_tolerance(snapshot):
    values = np.full((4, 8), 1e-7)
    values[2, 5] = 3e-2
    values[3] = 1e-3
    over = values > 1e-5
    text = render(DiffMap(values, over, 1e-5, title="full vs incremental · tolerance 1e-05"))
    lines = text.splitlines()
    assert "✗ over tolerance: heads 5" in lines[4]
    assert "over tolerance: heads 0, 1, 2, 3, 4, 5, 6, 7" in lines[5]
    assert "over tolerance" not in lines[2]
    assert text == snapshot


def diff_cells(text: str, heads: int) -> list[list[str]]:
    """The three-character cells of each layer line of a DiffMap rendered without color."""
    rows = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    return [[row[6 + 3 * h : 9 + 3 * h] for h in range(heads)] for row in rows]


def test_diff_map_colors_are_anchored_at_the_tolerance():
    """A difference under tolerance reads as fine even when it is the largest seen: the scale ends at
    the tolerance, not at the largest difference (3e-06 under 1e-05 was drawn bright yellow)."""
    from attnscope.render.colors import viridis
    from attnscope.render.diffmap import FINE, OVER_COLOR

    def cell_lines(values) -> str:  # the colored lines of cells (the legend shows every color)
        text = render(DiffMap(values, values > 1e-5, 1e-5), color=True)
        return "\n".join(line for line in text.splitlines() if ANSI.sub("", line)[:5].strip().isdigit())

    def background(color: str) -> str:
        return f"48;2;{int(color[1:3], 16)};{int(color[3:5], 16)};{int(color[5:7], 16)}"

    values = np.full((2, 4), 1e-9)
    values[0, 1] = 3e-6  # the largest difference, under tolerance
    under = cell_lines(values)
    assert under.count("48;2;") == 8
    assert not any(background(viridis(x)) in under for x in np.linspace(FINE + 0.02, 1.0, 30))  # no bright cell
    assert background(OVER_COLOR) not in under and OVER_COLOR == viridis(1.0)
    values[1, 2] = 2e-5  # over tolerance
    assert background(OVER_COLOR) in cell_lines(values)
    # without color: a lighter shade for 3e-06 than for 1e-09, ✗ only over tolerance, never the full block
    cells = diff_cells(render(DiffMap(values, values > 1e-5, 1e-5)), 4)
    assert cells[1][2] == " ✗ " and all("✗" not in c for row in cells for c in row if c != cells[1][2])
    assert cells[0][1] != cells[0][0] and "█" not in "".join(c for row in cells for c in row)


def compare_map_values() -> np.ndarray:
    """[4, 8] differences of a quantized model: every head over 1e-05, from 1e-04 to 3e-02."""
    values = np.geomspace(1e-4, 3e-2, 32).reshape(4, 8)
    return values[:, np.random.default_rng(0).permutation(8)]


def test_compare_map_scale_is_the_data_range_with_the_tolerance_snapshot(snapshot):
    """Every head over tolerance: the scale is the map's own range (log), the tolerance is stated and
    marked on the colorbar (here under the whole range), ✗ on each head's own shade."""
    values = compare_map_values()
    text = render(RangeMap(values, values > 1e-5, 1e-5, title="B vs A · max |Δ| per layer × head"))
    assert "max |Δ|, log 1e-04 … 0.03 (this map's range)" in text
    assert "┃ the tolerance 1e-05, under this range" in text
    assert "✗ max |Δ| over 1e-05: 32 of 32 heads" in text
    cells = diff_cells(text, 8)
    assert all(c[1] == "✗" for row in cells for c in row)
    low, high = np.unravel_index(values.argmin(), values.shape), np.unravel_index(values.argmax(), values.shape)
    assert cells[low[0]][low[1]] == "░✗░" and cells[high[0]][high[1]] == "█✗█"
    assert text == snapshot
    # a tolerance inside the range: marked where it falls on the colorbar
    values = np.geomspace(1e-7, 1e-3, 32).reshape(4, 8)
    legend = render(RangeMap(values, values > 1e-5, 1e-5)).splitlines()[-3:]
    assert (
        legend[0].index("┃") == 6 + 8
    )  # half way: 1e-05 is 2 decades of 4 up and legend[1].strip() == "┃ the tolerance 1e-05"
    assert "✗ max |Δ| over 1e-05: 16 of 32 heads" in legend[2]


def test_compare_map_in_color_grades_heads_that_are_all_over_tolerance():
    values = compare_map_values()
    text = render(RangeMap(values, values > 1e-5, 1e-5), color=True)
    backgrounds = set(re.findall(r"48;2;\d+;\d+;\d+", text))
    assert len(backgrounds) >= 16  # the heads' own colors, not one "over" yellow


def test_compare_map_of_a_divergence_states_the_tolerance_of_the_marks():
    """A map of the mean JS divergence: not in the tolerance's unit, so no mark on the colorbar; the
    legend says what ✗ means and, when no head is over, says none (no contradictory ✗ caption)."""
    values = compare_map_values() / 10
    over = np.zeros(values.shape, bool)
    text = render(
        RangeMap(
            values, over, 1e-5, measure="mean JS", over_means="output or probabilities over atol 1e-05", on_scale=False
        )
    )
    assert "mean JS, log 1e-05 … 3e-03 (this map's range)" in text and "┃" not in text
    assert "✗ output or probabilities over atol 1e-05: none of the 32 heads" in text
    assert "✗" not in "".join(c for row in diff_cells(text, 8) for c in row)
    zero = render(RangeMap(np.zeros((2, 4)), np.zeros((2, 4), bool), 1e-5, measure="mean JS", on_scale=False))
    assert "mean JS: 0 in every head" in zero


def test_position_diff_marks_worst_position():
    values = np.full(50, 1e-8)
    values[37] = 1.0
    text = render(PositionDiff(values, 1e-5, title="layer 2 head 1"))
    assert "worst at position 37" in text and "✗" in text


def test_position_diff_draws_the_incremental_paths():
    """Under the strip: ┊ in the column where a chunk meets the cache, ─ inside chunks, · from the
    first position decoded one token at a time (one column a position when they fit)."""
    from attnscope.inspector.incremental import parse_mode

    plan = parse_mode("default").plan(48).as_dict()  # chunks 0-6 and 7-15, then 16-47 one at a time
    text = render(PositionDiff(np.zeros(48), 1e-5, plan=plan), 120)
    line = next(row for row in text.splitlines() if row.lstrip().startswith("inc"))
    assert line.split("inc ", 1)[1].rstrip() == "─" * 7 + "┊" + "─" * 8 + "·" * 32


@pytest.mark.parametrize("width", [80, 200])
def test_nothing_is_wider_than_the_console(width):
    w, a = causal_weights(64)
    tiles = masks.causal().blocks(4096, 4096, 64, 64)
    items = [
        Heatmap(w, a, [f"tok{i}" for i in range(64)], [f"tok{i}" for i in range(64)]),
        mask_view(masks.sliding_window(512), 4096, 4096),
        TileMap(tiles.states[0, 0].numpy(), 64, 64, tiles.sparsity),
        DiffMap(np.random.default_rng(0).random((32, 32)), np.zeros((32, 32), bool)),
        RangeMap(np.random.default_rng(0).random((32, 32)), np.ones((32, 32), bool), 0.5, measure="mean JS"),
        PositionDiff(np.random.default_rng(0).random(4096), 0.5),
    ]
    for item in items:
        for color in (False, True):
            for line in ANSI.sub("", render(item, width, color)).splitlines():
                assert cell_len(line) <= width, (type(item).__name__, line)


def test_pooled_heatmap_of_a_long_prompt_from_a_result():
    from pathlib import Path

    import attnscope
    from attnscope.model import ModelConfig, Transformer
    from attnscope.model.native import LoadedModel
    from attnscope.render.heatmap import head_heatmap

    torch.manual_seed(0)
    net = Transformer(
        ModelConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
        )
    ).eval()
    result = attnscope.Scope(LoadedModel(net, None, "r", Path("."))).run(list(range(1, 61)) * 10)
    heatmap = head_heatmap(result, 0, 1, width=80, max_lines=16, title="long")
    assert "600×600 → 32×" in render(heatmap, 80, color=True)  # two query rows per line
    assert "600×600 → 16×" in render(heatmap, 80)  # one row per line without color
    assert heatmap.weights.shape[0] == 32 and heatmap.weights.shape[1] == 75  # labels: 5 columns of positions
    assert max(cell_len(line) for line in ANSI.sub("", render(heatmap, 80, color=True)).splitlines()) <= 80
    dense = result.attention(0, 1).numpy()
    re_, ce = heatmap.row_edges, heatmap.col_edges
    assert heatmap.weights[3, 5] == pytest.approx(dense[re_[3] : re_[4], ce[5] : ce[6]].max(), abs=1e-6)


@pytest.mark.usefixtures("tiny_code")  # the committed default model: missing, the test fails
def test_run_output_snapshot(snapshot):
    from typer.testing import CliRunner

    from attnscope.cli import app

    result = CliRunner().invoke(
        app,
        ["run", "-p", "def fibonacci(n):", "-n", "8", "--checks", "none", "--device", "cpu", "--backend", "eager"],
        env={"COLUMNS": "100"},
    )
    assert result.exit_code == 0, result.output
    assert max(cell_len(line) for line in result.output.splitlines()) <= 100
    # captions wrap at the terminal's width, not at their table's (~56 columns)
    assert "entropy min–max over heads (nats) · sink: largest mean weight on token 0 · Δ inc" in result.output
    assert result.output == snapshot


def test_without_color_every_way_the_heatmap_uses_the_shade_ramp():
    """NO_COLOR in a terminal leaves rich a color system but drops every color: half blocks would be
    blank. Whatever turns color off — NO_COLOR, no terminal, --color never — draws the shade ramp."""
    from attnscope.render.console import output_console

    w, a = causal_weights(len(TOKENS))
    heatmap = Heatmap(w, a, TOKENS, TOKENS, title="t")
    consoles = {
        "NO_COLOR in a terminal": Console(file=io.StringIO(), width=80, force_terminal=True, no_color=True),
        "not a terminal": Console(file=io.StringIO(), width=80),
        "--color never": output_console("never"),
    }
    for why, console in consoles.items():
        console.file = io.StringIO()
        console.print(heatmap)
        text = ANSI.sub("", console.file.getvalue())
        assert "▀" not in text and " ░▒▓█  linear" in text, why
        assert cell_rows(text)[0].startswith("█·"), why  # the first key, then masked cells
    colored = Console(file=io.StringIO(), width=80, force_terminal=True, color_system="truecolor")
    colored.print(heatmap)
    assert "▀" in colored.file.getvalue()


def test_the_colorbar_fits_80_columns_and_names_the_left_label_only_for_two_rows_per_line():
    labels = [f"t{i}" for i in range(40)]
    w, a = causal_weights(40)
    for width in (80, 60, 46):
        text = ANSI.sub("", render(Heatmap(w, a, labels, labels, title="t"), width=width, color=True))
        bar = next(line for line in text.splitlines() if "masked" in line)
        assert "NaN/Inf" in bar and cell_len(bar) <= width, (width, bar)
    two_per_line = ANSI.sub("", render(Heatmap(w, a, labels, labels, title="t"), width=120, color=True))
    assert "▀=left label" in two_per_line  # 40 rows fit only two to a line
    w, a = causal_weights(len(TOKENS))
    square = ANSI.sub("", render(Heatmap(w, a, TOKENS, TOKENS, title="t"), width=120, color=True))
    assert "▀=left label" not in square  # magnified: each token has its own square cell and one label


def test_axis_labels_are_never_cut():
    from attnscope.render.axes import axis

    line = axis(np.arange(0, 4096 + 57, 57), 72, step=10)
    assert line.split() == [str(57 * j) for j in range(0, 70, 10)]  # 3990 at column 70 does not fit: left out
    assert axis(np.arange(20), 12, step=5).split() == ["0", "5", "10"]


def failing_check():
    from attnscope.inspector.report import Check

    return Check(
        "full_vs_incremental",
        False,
        {"max_abs_diff": 0.25, "tolerance": {"atol": 1e-5}},
        {"layer": 12, "head": 31, "position": 1023, "stage": "output"},
        "incremental attention output differs from the full forward from layer 12 on "
        "(head 31, position 1023; max |Δ| 2.50e-01)",
    )


@pytest.mark.parametrize("width", [40, 80, 120, 240])
def test_a_check_reads_at_any_width(width):
    """No column is narrower than its content: the name and figure whole on the first line, where it
    is worst wrapped at its parts, the finding beside them or on its own lines, every word whole."""
    from attnscope.inspector.report import Check
    from attnscope.render.checks import CheckRow, Columns

    checks = [failing_check(), Check("nan", True, {"nonfinite_counts": {"scores": 0}}, None, "no NaN or Inf")]
    columns = Columns.of(checks)
    text = render(CheckRow(checks[0], columns), width=width)
    lines = text.splitlines()
    assert all(cell_len(line) <= width for line in lines), lines
    assert lines[0].startswith("✗ full_vs_incremental") and "max |Δ| 2.50e-01" in lines[0]
    for part in ("layer 12", "head 31", "position 1023", "stage output"):
        assert any(part in line for line in lines), (part, lines)
    words = text.split()
    assert all(word in words for word in checks[0].message.split())
    if width >= 240:
        assert len(lines) == 1
    passed = render(CheckRow(checks[1], columns), width=width).splitlines()
    assert passed[0].startswith("✓ nan") and "no NaN or Inf" in " ".join(passed)
    assert len(passed) == (1 if width >= 120 else 2)


def test_the_head_table_splits_its_heads_into_blocks_that_fit_the_width():
    """16 heads at 80 columns: blocks of whole columns ("heads 0–6 of 16", ...), no header cut; at
    200 columns one table."""
    from support.models import random_model

    from attnscope.render.tables import head_table
    from attnscope.scope import Scope

    model = random_model(layers=2, vocab=256, hidden=128, max_positions=64, heads=16, kv_heads=4)
    report = Scope(model, backend="eager").run(list(range(1, 10)), roles=True).report()
    narrow = render(head_table(report), width=80)
    lines = narrow.splitlines()
    assert all(cell_len(line) <= 80 for line in lines) and "…" not in narrow
    headers = [line.split() for line in lines if line.startswith("layer")]
    assert len(headers) > 1 and [h for header in headers for h in header if h not in ("layer", "stat")] == [
        f"h{h}·kv{h // 4}" for h in range(16)
    ]
    assert "heads 0–" in narrow and "of 16" in narrow
    wide = render(head_table(report), width=200)
    assert sum(line.startswith("layer") for line in wide.splitlines()) == 1 and "of 16" not in wide
