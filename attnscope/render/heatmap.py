"""Terminal heatmaps of attention: one head, a kv group or a layer's mean, at a glance.

Cells are half blocks: one terminal line holds two query rows (``▀`` colored by the upper row,
its background by the lower). Weights use viridis (perceptual, colorblind-safe) on a linear or log
scale with a colorbar; masked cells are gray, distinct from a zero weight; NaN/Inf are red. Without
color (NO_COLOR, or output that is not a terminal) each line is one query row drawn with the shade
ramp " ░▒▓█" and masked cells as ``·`` so the map still reads in a log file. Maps larger than the
space are pooled and the title says how ("4096×4096 → 48×120, max-pooled").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
from rich.cells import cell_len
from rich.color import Color
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from attnscope.pooling import pool2d
from attnscope.render.axes import axis
from attnscope.render.colors import (
    MASKED_COLOR,
    NONFINITE_COLOR,
    SHADES,
    Scale,
    in_color,
    shade,
    viridis,
    viridis_table,
)

if TYPE_CHECKING:
    import torch

LABEL_WIDTH = 7  # characters of token text per label
CURSOR_COLOR = "#ff3cf0"  # the TUI's cell cursor: magenta, outside viridis
MAX_MAGNIFY = 4  # largest cell size (columns) for short prompts
MAX_WIDEN = 3  # columns a cell may take when the lines allow it only one half-line
DIM = Style(dim=True)
# color codes: 0..1023 the viridis ramp, then masked, NaN/Inf, cursor, and "no lower half"
PALETTE = [*viridis_table(), MASKED_COLOR, NONFINITE_COLOR, CURSOR_COLOR]
MASKED_CODE, NONFINITE_CODE, CURSOR_CODE, NO_COLOR_CODE = 1024, 1025, 1026, 1027
_PALETTE_COLORS = [Color.parse(c) for c in PALETTE]


def label(text: str, width: int) -> str:
    """A token made printable and cut to `width` (newline ⏎, tab ⇥, space ␣)."""
    text = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣").replace("\r", "␍")
    return text if len(text) <= width else text[: width - 1] + "…"


class Line(NamedTuple):
    """A rendered line of a `Heatmap`: its segments, how many of them (at the end) are cells of the map,
    and its length in columns. Cells are half blocks colored in RGB, never dim: what a terminal is sent
    for them does not depend on its palette."""

    segments: list[Segment]
    cells: int
    length: int


class Heatmap:
    """Rich renderable of an attention map.

    Args:
        weights: [Sq, Sk] probabilities (already pooled, or exact).
        allowed: [Sq, Sk] bool (True = may attend); for pooled maps, True where any cell of the
            region may attend.
        query_labels / key_labels: token texts of the rows / columns (exact maps only).
        q_offset: absolute position of the first query row (past > 0 with a KV cache).
        title: shown above the map.
        log: log color scale (weights span decades; most are tiny).
        source_shape: (Sq, Sk) of the matrix before pooling, and `row_edges` / `col_edges` the
            pooling bins, when `weights` is pooled; `reduce` names the pooling.
        max_lines: at most this many lines of cells; larger exact maps are max-pooled here.
        compact: no labels, axis or colorbar (small multiples).
        cursor: (row, col) cell drawn highlighted (the TUI's cell cursor), in the map's own cells.
        color: half blocks in color, or the shade ramp; None: as the console draws (`in_color`).
    """

    def __init__(
        self,
        weights,
        allowed,
        query_labels: Sequence[str] = (),
        key_labels: Sequence[str] = (),
        q_offset: int = 0,
        title: str = "",
        log: bool = False,
        source_shape=None,
        row_edges=None,
        col_edges=None,
        reduce: str = "max",
        max_lines: int = 32,
        compact: bool = False,
        cursor: tuple[int, int] | None = None,
        color: bool | None = None,
    ):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.allowed = np.asarray(allowed, dtype=bool)
        self.query_labels, self.key_labels = list(query_labels), list(key_labels)
        self.q_offset = q_offset
        self.title = title
        self.log = log
        self.source_shape = source_shape
        self.row_edges, self.col_edges = row_edges, col_edges
        self.reduce = reduce
        self.max_lines = max_lines
        self.compact = compact
        self.cursor = cursor
        self.color = color

    @staticmethod
    def label_width(color: bool, compact: bool = False, tokens: bool = True) -> int:
        """Columns taken by the row labels left of the cells: the position, and the query tokens
        unless the map has none (a pooled map, whose rows span many tokens, gives them to cells)."""
        if compact:
            return 0
        return 5 + ((2 * LABEL_WIDTH + 2 if color else LABEL_WIDTH + 1) if tokens else 0)

    def _grid(self, width: int, color: bool):
        """Pool (if needed) to the space: returns weights, allowed, row edges, col edges, note."""
        w, a = self.weights, self.allowed
        rows_wanted = self.max_lines * (2 if color else 1)
        re = self.row_edges if self.row_edges is not None else np.arange(w.shape[0] + 1)
        ce = self.col_edges if self.col_edges is not None else np.arange(w.shape[1] + 1)
        if w.shape[0] > rows_wanted or w.shape[1] > width:
            w2, r2, c2 = pool2d(w, rows_wanted, width, "max")
            a2, _, _ = pool2d(a, rows_wanted, width, "any")
            w, a, re, ce = w2, a2, re[r2], ce[c2]
        src = self.source_shape or self.weights.shape
        pooled = tuple(src) != w.shape
        how = f"{self.reduce}-pooled" if self.row_edges is not None else "max-pooled"
        note = f"{src[0]}×{src[1]} → {w.shape[0]}×{w.shape[1]}, {how}" if pooled else f"{src[0]}×{src[1]}"
        return w, a, re, ce, pooled, note

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for part in self._parts(console, options.max_width):
            if isinstance(part, Text):
                yield part
            else:
                yield from part.segments
                yield Segment.line()

    def lines(self, console: Console, width: int, base: Style | None = None) -> list[Line]:
        """The rendered lines (each at most `width` cells) on a `base` style (the pane's colors). The
        lines of cells come out whole, without rich's splitting and cropping of a segment stream: the
        TUI draws them straight into strips."""
        options = console.options.update_width(width)
        lines: list[Line] = []
        for part in self._parts(console, width, base):
            if isinstance(part, Text):
                lines.extend(
                    Line(segments, 0, Segment.get_line_length(segments))
                    for segments in console.render_lines(part, options, style=base, pad=False)
                )
            else:
                lines.append(part)
        return lines

    def _parts(self, console: Console, max_width: int, base: Style | None = None):
        """Title, key axis, the cells and the colorbar: `Text`, or a `Line` of cells."""
        color = in_color(console) if self.color is None else self.color
        label_w = self.label_width(color, self.compact, tokens=bool(self.query_labels))
        width = max(8, max_width - label_w)
        w, a, re, ce, pooled, note = self._grid(width, color)
        finite = w[np.isfinite(w) & a]
        scale = Scale(float(finite.max()) if finite.size else 1.0, self.log)
        # short prompts: each cell m columns × m half-lines (square) when the lines allow, and wider
        # (mx columns) where only the width does: a small map uses the room a large one gets
        m = mx = 1
        if color and w.size:
            m = max(1, min(MAX_MAGNIFY, width // w.shape[1], 2 * self.max_lines // w.shape[0]))
            mx = max(m, min(MAX_WIDEN, width // w.shape[1]))
        yield Text(self.title if self.compact else f"{self.title}  ({note})", style="bold")
        if not self.compact:
            yield from self._key_axis(w.shape[1], ce, pooled, label_w, mx)
        if color:
            yield from self._half_block_rows(w, a, re, pooled, scale, label_w, m, base, mx, console.color_system)
        else:
            yield from self._shade_rows(w, a, re, pooled, scale, label_w)
        if not self.compact:
            yield self._colorbar(scale, color, label_w, m, max_width, w.shape[1] * mx)

    def _key_axis(self, n: int, ce, pooled: bool, label_w: int, m: int = 1):
        yield Text(" " * label_w + axis(ce, n, 10 if n * m > 20 else 5, cell=m), style="dim")
        if pooled or not self.key_labels:
            return
        depth = min(4, max((len(label(t, 4)) for t in self.key_labels), default=0))
        for d in range(depth):  # key tokens written downwards, one column each
            chars = [" "] * (n * m)
            for j, t in enumerate(self.key_labels[:n]):
                text = label(t, 4)
                chars[j * m] = text[d] if d < len(text) else " "
            yield Text(" " * label_w + "".join(chars), style="cyan")

    def _row_label(self, i: int, re, pooled: bool) -> str:
        if pooled or not self.query_labels or i >= len(re) - 1:
            return ""
        return label(self.query_labels[int(re[i])], LABEL_WIDTH)

    def _colors(self, w, a, scale: Scale) -> np.ndarray:
        """The color code of every cell (an index into `PALETTE`), for the whole map at once."""
        codes = np.round(scale.array(w) * 1023).astype(np.int32)
        codes[~a] = MASKED_CODE
        codes[~np.isfinite(w)] = NONFINITE_CODE
        if self.cursor is not None and self.cursor[0] < w.shape[0] and self.cursor[1] < w.shape[1]:
            codes[self.cursor] = CURSOR_CODE
        return codes

    def _half_block_rows(
        self,
        w,
        a,
        re,
        pooled,
        scale,
        label_w,
        m: int = 1,
        base: Style | None = None,
        mx: int | None = None,
        color_system: str | None = None,
    ):
        """`Line`s of half blocks, each of segments (no Text spans: a long map has thousands of cells):
        cells of `m` half-lines and `mx` (default `m`) columns. Cells carry both their colors; `base` goes
        under the labels and under a last half line. The runs of cells are found for the whole map at
        once (numpy): what is left per cell run is making its segment."""
        mx = m if mx is None else mx
        colors = self._colors(w, a, scale)
        label_style = base + DIM if base else DIM
        n_rows = w.shape[0] * m  # half-lines
        firsts = np.arange(0, n_rows, 2)  # the upper half-line of each line
        lower = firsts + 1 < n_rows  # the line has a lower half
        upper = colors[firsts // m]  # [lines, cols] color codes of the upper halves
        under = np.where(lower[:, None], colors[np.minimum((firsts + 1) // m, w.shape[0] - 1)], NO_COLOR_CODE)
        # consecutive cells of the same two colors become one segment
        pair = upper * 4096 + under
        starts = np.ones(pair.shape, dtype=bool)
        starts[:, 1:] = pair[:, 1:] != pair[:, :-1]
        flat = np.flatnonzero(starts)
        runs = np.diff(np.append(flat, pair.size)) * mx  # a line's last run ends where the next one starts
        cells = _half_block_segments(((pair.ravel()[flat].astype(np.int64) << 16) | runs).tolist(), color_system)
        bounds = np.concatenate(([0], np.cumsum(starts.sum(axis=1)))).tolist()  # each line's runs in `cells`
        for n, r in enumerate(firsts.tolist()):
            top, below = r // m, (r + 1) // m  # source rows of the upper and lower half
            if label_w:
                if m == 1:
                    text = f"{self._row_label(top, re, pooled):<{LABEL_WIDTH}}{' ' if pooled else '│'}"
                    text += f"{self._row_label(below, re, pooled) if lower[n] else '':<{LABEL_WIDTH}}"
                    pos = f"{self.q_offset + int(re[top]):>4}"
                elif r % m == 0 or (r - 1) // m != top:  # the line where this source row starts
                    text, pos = (
                        f"{self._row_label(top, re, pooled):<{2 * LABEL_WIDTH + 1}}",
                        f"{self.q_offset + int(re[top]):>4}",
                    )
                else:
                    text, pos = "", ""
                line = [Segment(f"{pos:>4} {text} "[:label_w].ljust(label_w), label_style)]
            else:
                line = []
            line_cells = cells[bounds[n] : bounds[n + 1]]
            length = (cell_len(line[0].text) if line else 0) + w.shape[1] * mx
            if base and not lower[n]:  # the cells take the pane's style: no longer only RGB colors of ours
                yield Line(line + list(Segment.apply_style(line_cells, base)), 0, length)
            else:
                yield Line(line + line_cells, len(line_cells), length)

    def _shade_rows(self, w, a, re, pooled, scale, label_w):
        for i in range(w.shape[0]):
            line = Text(f"{self.q_offset + int(re[i]):>4} {self._row_label(i, re, pooled):<{LABEL_WIDTH}} "[:label_w])
            for j in range(w.shape[1]):
                x = float(w[i, j])
                if self.cursor == (i, j):
                    line.append("◆", style="reverse")
                    continue
                line.append("!" if not np.isfinite(x) else "·" if not a[i, j] else shade(scale(x)))
            yield line

    def _colorbar(self, scale: Scale, color: bool, label_w: int, m: int, width: int, map_w: int | None = None) -> Text:
        """The scale and the legend on one line under the cells (`map_w` columns wide, at `label_w`): the
        ramp as wide as the map allows (16, 8 or 4 steps), the legend left of it in the labels' room when
        it does not fit after it; from the left edge only when even that is too wide for `width`."""
        map_w = max(0, width - label_w) if map_w is None else map_w
        legend: list[list[tuple[str, Style | str]]] = (
            [[("· masked", "")], [("! NaN/Inf", "")]]
            if not color
            else [
                [("█", Style(color=MASKED_COLOR)), (" masked", "")],
                [("█", Style(color=NONFINITE_COLOR)), (" NaN/Inf", "")],
            ]
        )
        if color and self.query_labels and m == 1:  # two query rows per line: the upper one is the left label
            legend.append([("▀=left label", "dim")])
        sep = "  " if color else "   "

        def length(parts) -> int:
            return sum(len(text) for part in parts for text, _ in part) + len(sep) * (len(parts) - 1)

        def ramp(steps: int) -> list[tuple[str, Style | str]]:
            if not color:
                return [(SHADES, ""), (f"  {scale.label()}", "")]
            return [*(("█", Style(color=viridis(k / (steps - 1)))) for k in range(steps)), (f" {scale.label()}", "")]

        room = max(map_w, min(width - label_w, 24))  # a narrow map: its scale may reach a little past it
        for steps in (16, 8, 4):
            after = [ramp(steps), *legend]
            if length(after) <= room:
                return self._bar(" " * label_w, after, sep)
        for steps in (16, 8, 4):  # the legend in the labels' room, the scale under the map
            if length([ramp(steps)]) <= room or steps == 4:
                break
        before = legend[:2]
        if label_w and length(before) + 1 <= label_w:
            bar = self._bar(" " * (label_w - length(before) - 1), before, sep)
            bar.append(" ")
            bar.append_text(self._bar("", [ramp(steps)], sep))
            return bar
        parts = [ramp(steps), *before]  # too narrow for both: from the left edge, as much as fits
        return self._bar(" " * max(0, min(label_w, width - length(parts))), parts, sep)

    @staticmethod
    def _bar(indent: str, parts: list[list[tuple[str, Style | str]]], sep: str) -> Text:
        bar = Text(indent)
        for n, part in enumerate(parts):
            bar.append(sep if n else "")
            for text, style in part:
                bar.append(text, style)
        return bar


# per color system (a console's; rich and Textual keep a style's escape sequence in it, for one):
# upper code · 4096 + lower code -> style, and (upper · 4096 + lower) · 65536 + columns (< 65536) -> segment
_HALF_BLOCKS: dict[str | None, tuple[dict[int, Style], dict[int, Segment]]] = {}
_KEPT = 1 << 16  # segments kept across maps (a 240×70 terminal's map has ~5 500 runs, ~600–1 200 of them distinct)


def _half_block_segments(keys: list[int], color_system: str | None) -> list[Segment]:
    """The segments of runs of half blocks (upper half: foreground, lower: background), by
    ``(upper · 4096 + lower) · 65536 + columns``. Runs repeat within a map and across maps, and each is
    kept: the same run is the same `Segment`, its colors the same `Style` object, so the escape sequence
    rich and Textual keep with a style is found again on the next map. Kept per `color_system`, the
    console's, since that sequence is kept for one only."""
    styles, segments = _HALF_BLOCKS.setdefault(color_system, ({}, {}))
    missing = set(keys).difference(segments)
    if len(segments) + len(missing) > _KEPT or len(styles) > _KEPT:
        segments.clear()
        styles.clear()
        missing = set(keys)
    for key in missing:
        pair, columns = divmod(key, 65536)
        style = styles.get(pair)
        if style is None:
            upper, under = divmod(pair, 4096)
            style = styles[pair] = Style.from_color(  # Style(color=…, bgcolor=…) without its parsing
                _PALETTE_COLORS[upper], _PALETTE_COLORS[under] if under != NO_COLOR_CODE else None
            )
        segments[key] = Segment("▀" * columns, style)
    return list(map(segments.__getitem__, keys))


class TopKeys:
    """The row of one query as a bar list of its top-k keys: position, token, weight, bar."""

    def __init__(self, row, key_labels: Sequence[str], position: int, query_label: str, k: int = 10, allowed=None):
        self.row = np.asarray(row, dtype=np.float32)
        self.allowed = np.ones_like(self.row, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
        self.key_labels = list(key_labels)
        self.position, self.query_label, self.k = position, query_label, k

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        order = [j for j in np.argsort(-np.nan_to_num(self.row, nan=np.inf)) if self.allowed[j]][: self.k]
        yield Text(f"query {self.position} {label(self.query_label, 16)!s}: top {len(order)} keys", style="bold")
        bar_w = max(10, options.max_width - 36)
        for j in order:
            x = float(self.row[j])
            line = Text(f"{j:>6} {label(self.key_labels[j], 12):<12} {x:7.4f} ")
            line.append("█" * max(0, round(x * bar_w)), style=viridis(x) if in_color(console) else "")
            yield line


class HeadPlace(Protocol):
    """One layer's place in `HeadMaps`: its matrix shape and which cells the mask allows."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def allowed(self, head: int, batch: int = 0) -> torch.Tensor: ...


class HeadMaps(Protocol):
    """What the heatmaps need of something with a map per (layer, head): a `Result` (attention
    probabilities) or a `Comparison` (``|P_B − P_A|``)."""

    def record_at(self, layer: int, head: int | None = None) -> HeadPlace: ...

    def row_tokens(self, batch: int = 0) -> list[str]: ...

    def attention(
        self, layer: int, head: int, queries: slice = ..., keys: slice = ..., batch: int = 0
    ) -> torch.Tensor: ...

    def attention_pooled(
        self,
        layer: int,
        head: int,
        height: int,
        width: int,
        reduce: str = "max",
        batch: int = 0,
        queries: slice = ...,
        keys: slice = ...,
    ) -> np.ndarray: ...


@dataclass
class HeadMap:
    """The cells shown for one head: exact probabilities, or a pooled map of the whole matrix."""

    weights: np.ndarray  # [rows, cols] shown cells
    allowed: np.ndarray  # [rows, cols] bool (pooled: any key of the cell's region allowed)
    row_edges: np.ndarray  # query-row index (of Sq) where each shown row starts; len rows + 1
    col_edges: np.ndarray  # key index where each shown column starts; len cols + 1
    exact: bool


def head_map(
    result: HeadMaps,
    layer: int,
    head: int,
    exact_cells: tuple[int, int],
    pooled_cells: tuple[int, int],
    batch: int = 0,
    origin: tuple[int, int] | None = None,
) -> HeadMap:
    """Exact cells when the matrix fits `exact_cells` (rows, cols), else the max-pooled map of
    `pooled_cells`, computed by the inspector band by band (the full matrix is never built). With
    `origin` (first query row, first key), the exact window of `exact_cells` there (a zoom)."""
    rec = result.record_at(layer, head)
    Sq, Sk = rec.shape
    (rows, cols), (pooled_rows, pooled_cols) = exact_cells, pooled_cells
    allowed = rec.allowed(head, batch).cpu().numpy()
    if origin is not None:
        q0, k0 = origin
        q1, k1 = min(Sq, q0 + rows), min(Sk, k0 + cols)
        w = result.attention(layer, head, queries=slice(q0, q1), keys=slice(k0, k1), batch=batch).cpu().numpy()
        return HeadMap(w, allowed[q0:q1, k0:k1], np.arange(q0, q1 + 1), np.arange(k0, k1 + 1), True)
    if Sq <= rows and Sk <= cols:
        w = result.attention(layer, head, batch=batch).cpu().numpy()
        return HeadMap(w, allowed, np.arange(Sq + 1), np.arange(Sk + 1), True)
    w = result.attention_pooled(layer, head, pooled_rows, pooled_cols, "max", batch=batch)
    a, re, ce = pool2d(allowed, pooled_rows, pooled_cols, "any")
    return HeadMap(w, a, re, ce, False)


def map_heatmap(
    result: HeadMaps,
    layer: int,
    head: int,
    view: HeadMap,
    *,
    title: str = "",
    log: bool = False,
    compact: bool = False,
    max_lines: int = 32,
    cursor: tuple[int, int] | None = None,
    batch: int = 0,
    color: bool | None = None,
) -> Heatmap:
    """The `Heatmap` of a `HeadMap`: token labels on exact cells, positions on pooled ones (`color`:
    see `Heatmap`)."""
    Sq, Sk = result.record_at(layer).shape
    past = Sk - Sq
    labels = result.row_tokens(batch)
    q_labels = [labels[past + int(r)] for r in view.row_edges[:-1]] if view.exact else ()
    k_labels = [labels[int(c)] for c in view.col_edges[:-1]] if view.exact else ()
    pooled = not view.exact
    return Heatmap(
        view.weights,
        view.allowed,
        q_labels,
        k_labels,
        past + int(view.row_edges[0]),
        title,
        log,
        source_shape=(Sq, Sk) if pooled else None,
        row_edges=view.row_edges if pooled else None,
        col_edges=view.col_edges if pooled else None,
        reduce="max",
        max_lines=max_lines,
        compact=compact,
        cursor=cursor,
        color=color,
    )


def head_heatmap(
    result: HeadMaps,
    layer: int,
    head: int,
    *,
    width: int = 120,
    max_lines: int = 32,
    log: bool = False,
    title: str = "",
    compact: bool = False,
    batch: int = 0,
    color: bool | None = None,
) -> Heatmap:
    """The heatmap of one head of a `Result`: exact when it fits `width` × 2·`max_lines` cells, else
    max-pooled by the inspector tile by tile (the full matrix is never built)."""
    rows = 2 * max_lines
    exact = (rows, max(8, width - Heatmap.label_width(True, compact)))
    pooled = (rows, max(8, width - Heatmap.label_width(True, compact, tokens=False)))  # no labels: wider cells
    view = head_map(result, layer, head, exact, pooled, batch)
    return map_heatmap(
        result, layer, head, view, title=title, log=log, compact=compact, max_lines=max_lines, batch=batch, color=color
    )


def small_multiples(
    result: HeadMaps,
    layer: int,
    heads,
    *,
    width: int,
    cell_width: int,
    max_lines: int,
    log: bool = False,
    title: str = "",
    label=None,
    color: bool | None = None,
) -> Group:
    """Several heads of one layer as small heatmaps in a grid that fills `width` (``run --heads all``,
    the TUI's GQA group); `label(head)` titles each."""
    per_row = max(1, width // (cell_width + 2))
    grid = Table.grid(padding=(0, 2))
    heads = list(heads)
    for _ in range(min(per_row, len(heads))):
        grid.add_column()
    cells = [
        head_heatmap(
            result,
            layer,
            h,
            width=cell_width,
            max_lines=max_lines,
            log=log,
            compact=True,
            title=label(h) if label else f"h{h}",
            color=color,
        )
        for h in heads
    ]
    for i in range(0, len(cells), per_row):
        grid.add_row(*cells[i : i + per_row])
    return Group(Text(title, style="bold"), grid)
