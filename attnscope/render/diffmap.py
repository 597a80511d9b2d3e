"""Diff maps: |full − incremental| or |backend − reference| per (layer, head) as a small grid, and
per query position for one head; and the map of two models' differences (`RangeMap`).

A check's map (`DiffMap`) anchors its color scale at the tolerance, not at the largest difference
seen: differences under it run on the dark part of viridis (purple → green) up to the tolerance, on a
log scale over six decades below it, so that they read as fine however they compare with each other;
cells over tolerance are yellow and marked ✗, NaN/Inf red. Without color, the shade ramp's lighter
half and ✗.

Two different models (a quantized B) can put every head over a tolerance made for rounding: a scale
that stops there is all yellow. `RangeMap` colors by the map's own range instead (log, from the
smallest nonzero value to the largest, zero darkest), marks the heads over tolerance ✗ on their own
color, and states the range and the tolerance in its legend (marked on the colorbar when the values
are in the tolerance's unit).
"""

from __future__ import annotations

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.style import Style
from rich.text import Text

from attnscope.pooling import pool2d
from attnscope.render.axes import axis
from attnscope.render.colors import NONFINITE_COLOR, Scale, format_number, in_color, shade, viridis

DECADES = 6  # the scale spans tolerance / 10**6 .. tolerance
FINE = 0.6  # differences under tolerance use viridis (and the shade ramp) up to here
OVER_COLOR = viridis(1.0)


def tolerance_scale(tolerance: float) -> Scale:
    """The log scale of differences: tolerance / 10**6 … tolerance."""
    return Scale(tolerance, log=True, low=tolerance / 10**DECADES)


def _cell(x: float, over: bool, scale: Scale, color: bool) -> tuple[str, str | None]:
    """(glyph, background color) of one difference: ✗ over tolerance, ! non-finite, else its level."""
    if not np.isfinite(x):
        return "!", NONFINITE_COLOR
    if over:
        return "✗", OVER_COLOR
    level = FINE * scale(min(x, scale.top))
    return (" ", viridis(level)) if color else (shade(level), None)


class DiffMap:
    """Rich renderable of max |Δ| per (layer, head).

    Args:
        values: [L, H] largest absolute difference of each head's attention output.
        over: [L, H] bool, True where the head is over tolerance.
        tolerance: where the color scale ends (the check's atol).
        title: shown above (names the comparison and the tolerance).
        measure: what the values are, for the legend.
    """

    def __init__(self, values, over, tolerance: float = 1e-5, title: str = "", measure: str = "max |Δ|"):
        self.values = np.asarray(values, dtype=np.float64)
        self.over = np.asarray(over, dtype=bool)
        self.tolerance = tolerance
        self.title = title
        self.measure = measure

    def cell(self, x: float, over: bool, color: bool) -> Text:
        """The three characters of one head."""
        glyph, background = _cell(x, over, tolerance_scale(self.tolerance), color)
        if color:
            return Text(f" {glyph} ", Style(color="black" if glyph == "✗" else "white", bold=True, bgcolor=background))
        return Text(f" {glyph} ")

    def legend(self, color: bool) -> list[Text]:
        return [legend(tolerance_scale(self.tolerance), color, self.measure)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        L, H = self.values.shape
        color = in_color(console)
        yield Text(self.title, style="bold")
        yield Text("layer " + "".join(f"{h:>3}" for h in range(H)), style="dim")
        for layer in range(L):
            line = Text(f"{layer:>5} ", style="dim")
            for h in range(H):
                line.append_text(self.cell(float(self.values[layer, h]), bool(self.over[layer, h]), color))
            bad = np.nonzero(self.over[layer])[0]
            if len(bad):
                line.append(f"  ✗ over tolerance: heads {', '.join(map(str, bad))}", style="red")
            yield line
        yield from self.legend(color)


def legend(scale: Scale, color: bool, measure: str = "max |Δ|") -> Text:
    """The scale under tolerance, then what over tolerance and non-finite look like."""
    text = Text("      ")
    for k in range(8):
        level = FINE * k / 7
        text.append("█" if color else shade(level), Style(color=viridis(level)) if color else "")
    text.append(f" {measure} {scale.label()} (the tolerance)  ", style="dim")
    text.append("✗", Style(color="black", bgcolor=OVER_COLOR) if color else "").append(" over  ", style="dim")
    text.append("!", Style(color="white", bgcolor=NONFINITE_COLOR) if color else "").append(" NaN/Inf", style="dim")
    return text


IDENTICAL = "identical: every layer, head and logit equal bit for bit"
ZERO_GAP = 0.15  # in a RangeMap, the smallest nonzero value sits this far above zero on the ramp
BAR = 16  # cells of a RangeMap's colorbar


def range_scale(values: np.ndarray) -> Scale | None:
    """The log scale of a map's own range: its smallest to its largest finite nonzero value (a decade
    under a single value); None when every value is zero or non-finite."""
    seen = values[np.isfinite(values) & (values > 0)]
    if not seen.size:
        return None
    low, top = float(seen.min()), float(seen.max())
    return Scale(top, log=True, low=low if low < top else top / 10)


class RangeMap(DiffMap):
    """Rich renderable of a difference per (layer, head) colored by its own range (log): the heads
    that moved most stand out however far over (or under) the tolerance they all are; ✗ marks the
    heads over tolerance on their own color.

    Args:
        values: [L, H] the difference of each head (≥ 0).
        over: [L, H] bool, True where the head is over tolerance.
        tolerance: the tolerance, stated in the legend.
        title: shown above.
        measure: what the values are, for the legend.
        over_means: what ✗ means, for the legend (default: the measure over the tolerance).
        on_scale: the values are in the tolerance's unit: mark the tolerance on the colorbar.
    """

    def __init__(
        self,
        values,
        over,
        tolerance: float,
        title: str = "",
        measure: str = "max |Δ|",
        over_means: str | None = None,
        on_scale: bool = True,
    ):
        super().__init__(values, over, tolerance, title, measure)
        self.scale = range_scale(self.values)
        self.over_means = over_means or f"{measure} over {format_number(tolerance)}"
        self.on_scale = on_scale

    def level(self, x: float) -> float:
        """Where a value sits on the ramp: 0 for zero, ZERO_GAP … 1 over the map's range."""
        if self.scale is None or x <= 0:
            return 0.0
        return ZERO_GAP + (1 - ZERO_GAP) * self.scale(min(x, self.scale.top))

    def cell(self, x: float, over: bool, color: bool) -> Text:
        if not np.isfinite(x):
            return Text(" ! ", Style(color="white", bold=True, bgcolor=NONFINITE_COLOR)) if color else Text(" ! ")
        level = self.level(x)
        if not color:
            return Text(shade(level) + ("✗" if over else shade(level)) + shade(level))
        ink = "black" if level > FINE else "white"
        return Text(f" {'✗' if over else ' '} ", Style(color=ink, bold=True, bgcolor=viridis(level)))

    def legend(self, color: bool) -> list[Text]:
        """The colorbar over the map's range (the tolerance marked ┃ when on its scale), then ✗ and !."""
        n_over, n, scale, x = int(self.over.sum()), self.over.size, self.scale, self.tolerance
        mark, where = None, ""
        if scale is not None and self.on_scale:
            mark = 0 if x < scale.low else BAR if x > scale.top else round(scale(x) * BAR)
            where = ", under this range" if x < scale.low else ", over this range" if x > scale.top else ""
        bar = Text("      ")
        for k in range(BAR + 1):
            if k == mark:
                bar.append("┃", style="bold")
            if k < BAR:
                level = ZERO_GAP + (1 - ZERO_GAP) * (k + 0.5) / BAR
                bar.append("█" if color else shade(level), Style(color=viridis(level)) if color else "")
        if scale is None:
            bar.append(f" {self.measure}: 0 in every head", style="dim")
        else:
            span = f"{format_number(scale.low)} … {format_number(scale.top)}"
            bar.append(f" {self.measure}, log {span} (this map's range)", style="dim")
        lines = [bar]
        if mark is not None:
            lines.append(Text(f"      ┃ the tolerance {format_number(x)}{where}", style="dim"))
        over = Text("      ")
        over.append("✗", Style(color="black", bgcolor=OVER_COLOR) if color else "")
        count = f"{n_over} of {n} heads" if n_over else f"none of the {n} heads"
        over.append(f" {self.over_means}: {count}  ", style="dim")
        over.append("!", Style(color="white", bgcolor=NONFINITE_COLOR) if color else "").append(" NaN/Inf", style="dim")
        return [*lines, over]


class PositionDiff:
    """|Δ| per query position of one head, as a strip (pooled to the width) with the worst marked.

    Args:
        values: [S] largest |Δ| of each position.
        tolerance: where the color scale ends (the check's atol).
        over: [S] bool, True where the position is over tolerance (default: values > tolerance).
        plan: the positions' incremental paths (`attnscope.inspector.incremental.Plan.as_dict`), drawn
            under the strip: ┊ where a prefill chunk meets the cache, · where tokens went one at a time.
    """

    def __init__(self, values, tolerance: float, title: str = "", over=None, plan: dict | None = None):
        self.values = np.asarray(values, dtype=np.float64)
        self.tolerance = tolerance
        self.over = self.values > tolerance if over is None else np.asarray(over, dtype=bool)
        self.title = title
        self.plan = plan

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(8, options.max_width - 8)
        pooled, _, edges = pool2d(np.nan_to_num(self.values, nan=np.inf)[None, :], 1, width, "max")
        over, _, _ = pool2d((self.over | ~np.isfinite(self.values))[None, :], 1, width, "any")
        scale = tolerance_scale(self.tolerance)
        worst = int(np.nanargmax(np.nan_to_num(self.values, nan=np.inf))) if self.values.size else 0
        yield Text(
            f"{self.title}  (worst at position {worst}: {self.values[worst]:.2e}; tolerance {self.tolerance:.0e})",
            style="bold",
        )
        line = Text("  pos ", style="dim")
        color = in_color(console)
        for x, bad in zip(pooled[0], over[0], strict=True):
            glyph, background = _cell(float(x), bool(bad), scale, color)
            if color:
                line.append("▇" if glyph in "✗!" else "█", Style(color=background))
            else:
                line.append(glyph)
        yield line
        if self.plan is not None:
            yield Text("  inc " + _paths(self.plan, edges), style="dim")
        yield Text("      " + axis(edges, pooled.shape[1]), style="dim")


def _paths(plan: dict, edges) -> str:
    """One character per pooled column of positions ``edges[j]:edges[j+1]``: ┊ where a prefill chunk
    after the first starts in it, · where its positions went one token at a time, ─ in a chunk."""
    starts = np.array([first for first, _ in plan["chunks"][1:]], dtype=np.int64)
    tail = plan["one_token_at_a_time"][0] if plan["one_token_at_a_time"] else None
    line = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if ((starts >= lo) & (starts < hi)).any():
            line.append("┊")
        else:
            line.append("·" if tail is not None and lo >= tail else "─")
    return "".join(line)


def diff_panel(result, layer: int, head: int, comparison=None, versus: str | None = None) -> Group | Text:
    """What the comparing checks found, for the TUI's Diff tab: per check, the layer × head map of
    the largest differences and the selected head's differences per position; with `comparison` (an
    `attnscope.inspector.compare.Comparison`, or the error that stopped it) the same against its run A,
    named `versus` (default: model B, by name, that the result is compared with)."""
    parts = []
    if comparison is not None:
        parts += versus_panel(comparison, layer, head, versus)
    for name, title in (
        ("full_vs_incremental", "full vs incremental (KV cache)"),
        ("backend_vs_reference", f"{result.backend} vs eager float32"),
    ):
        diffs = result.diffs.get(name)
        if not diffs:
            continue
        values = np.stack([d.max_abs.cpu().numpy() for d in diffs])
        over = np.stack([d.bad_rows[0].any(-1).cpu().numpy() for d in diffs])
        figures = next(c for c in result.checks if c.name == name).figures
        tol = figures["tolerance"]
        scaled = " (atol × max(1, max |reference|))" if tol.get("atol_scaled_by_magnitude") else ""
        parts += [
            DiffMap(
                values,
                over,
                tol["atol"],
                title=f"{title} · max |Δ| per layer × head · tolerance "
                f"atol {tol['atol']:.0e}{scaled} rtol {tol['rtol']:.0e}",
            ),
            Text(),
        ]
        row = diffs[layer].row_max
        if row is not None:
            parts += [
                PositionDiff(
                    row[0, head].cpu().numpy(),
                    tol["atol"],
                    title=f"{title} · L{layer} h{head} per position",
                    over=diffs[layer].bad_rows[0, head].cpu().numpy(),
                    plan=figures.get("incremental"),
                ),
                Text(),
            ]
    return Group(*parts) if parts else Text("no diffs")


def versus_panel(comparison, layer: int, head: int, name: str | None = None) -> list:
    """The Diff tab's "vs B": the attention output's max |Δ| per layer × head (✗ where the output or
    the probabilities cross the tolerance), the first divergence, and the selected head per position;
    `name` says what the result is compared with (default: model B's name)."""
    if isinstance(comparison, str):
        return [Text(f"vs {name or 'B'}: {comparison}", style="red"), Text()]
    name = name or comparison.run_b.model.name
    tol = comparison.tolerance
    if comparison.identical:
        return [Text(f"vs {name}: {IDENTICAL}", style="green"), Text()]
    parts = [
        RangeMap(
            comparison.output_max,
            comparison.heads_over,
            tol.atol,
            title=f"vs {name} · max |Δ| of the attention output per layer × head · tolerance atol "
            f"{tol.atol:.0e} rtol {tol.rtol:.0e}",
            over_means=f"output or probabilities over atol {tol.atol:.0e}",
        ),
        Text(comparison.checks()[0].message, style="green" if comparison.checks()[0].passed else "red"),
        Text(),
    ]
    row = comparison.output[layer].row_max
    if row is not None:
        parts += [
            PositionDiff(row[0, head].cpu().numpy(), tol.atol, title=f"vs {name} · L{layer} h{head} per position"),
            Text(),
        ]
    return parts
