"""Diff maps: |full − incremental| or |backend − reference| per (layer, head) as a small grid on a
log color scale with the cells over tolerance marked, so the first bad layer/head stands out; and
per query position for one head."""

from __future__ import annotations

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.style import Style
from rich.text import Text

from attnscope.pooling import pool2d
from attnscope.render.axes import axis
from attnscope.render.colors import NONFINITE_COLOR, Scale, shade, viridis

FLOOR = 1e-9  # differences below this draw as the lowest color


def _scale(values: np.ndarray) -> Scale:
    finite = values[np.isfinite(values)]
    top = max(float(finite.max()) if finite.size else 0.0, FLOOR * 10)
    return Scale(top, log=True, low=max(FLOOR, top / 1e6))


class DiffMap:
    """Rich renderable of max |Δ| per (layer, head).

    Args:
        values: [L, H] largest absolute difference of each head's attention output.
        over: [L, H] bool, True where the head is over tolerance.
        title: shown above (names the comparison and the tolerance).
        measure: what the values are, for the legend.
    """

    def __init__(self, values, over, title: str = "", measure: str = "max |Δ|"):
        self.values = np.asarray(values, dtype=np.float64)
        self.over = np.asarray(over, dtype=bool)
        self.title = title
        self.measure = measure

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        L, H = self.values.shape
        color = console.color_system is not None
        scale = _scale(self.values)
        yield Text(self.title, style="bold")
        yield Text("layer " + "".join(f"{h:>3}" for h in range(H)), style="dim")
        for layer in range(L):
            line = Text(f"{layer:>5} ", style="dim")
            for h in range(H):
                x = float(self.values[layer, h])
                mark = "✗" if self.over[layer, h] else " "
                if not np.isfinite(x):
                    line.append(f" {mark if mark != ' ' else '!'} ", Style(color="white", bgcolor=NONFINITE_COLOR))
                elif color:
                    line.append(f" {mark} ", Style(color="white", bold=True, bgcolor=viridis(scale(x))))
                else:
                    line.append(f" {mark if mark != ' ' else shade(scale(x))} ")
            bad = np.nonzero(self.over[layer])[0]
            if len(bad):
                line.append(f"  ✗ over tolerance: heads {', '.join(map(str, bad))}", style="red")
            yield line
        yield Text(f"      {self.measure} on a {scale.label()} scale · ✗ over tolerance", style="dim")


class PositionDiff:
    """|Δ| per query position of one head, as a strip (pooled to the width) with the worst marked."""

    def __init__(self, values, tolerance: float, title: str = ""):
        self.values = np.asarray(values, dtype=np.float64)
        self.tolerance = tolerance
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(8, options.max_width - 8)
        pooled, _, edges = pool2d(np.nan_to_num(self.values, nan=np.inf)[None, :], 1, width, "max")
        scale = _scale(self.values)
        worst = int(np.nanargmax(np.nan_to_num(self.values, nan=np.inf))) if self.values.size else 0
        yield Text(f"{self.title}  (worst at position {worst}: {self.values[worst]:.2e}; tolerance "
                   f"{self.tolerance:.0e})", style="bold")
        line = Text("  pos ", style="dim")
        color = console.color_system is not None
        for x in pooled[0]:
            over = x > self.tolerance
            if color:
                line.append("▇" if over else "█", Style(color=NONFINITE_COLOR if over else viridis(scale(x))))
            else:
                line.append("✗" if over else shade(scale(x)))
        yield line
        yield Text("      " + axis(edges, pooled.shape[1]), style="dim")


def diff_panel(result, layer: int, head: int, comparison=None) -> Group | Text:
    """What the comparing checks found, for the TUI's Diff tab: per check, the layer × head map of
    the largest differences and the selected head's differences per position; with `comparison` (an
    `attnscope.inspector.compare.Comparison`, or the error that stopped it) the same against model B."""
    parts = []
    if comparison is not None:
        parts += versus_panel(comparison, layer, head)
    for name, title in (("full_vs_incremental", "full vs incremental (KV cache)"),
                        ("backend_vs_reference", f"{result.backend} vs eager float32")):
        diffs = result.diffs.get(name)
        if not diffs:
            continue
        values = np.stack([d.max_abs.cpu().numpy() for d in diffs])
        over = np.stack([d.bad_rows[0].any(-1).cpu().numpy() for d in diffs])
        tol = next(c for c in result.checks if c.name == name).figures["tolerance"]
        parts += [DiffMap(values, over, title=f"{title} · max |Δ| per layer × head · tolerance atol "
                          f"{tol['atol']:.0e} rtol {tol['rtol']:.0e}"), Text()]
        row = diffs[layer].row_max
        if row is not None:
            parts += [PositionDiff(row[0, head].cpu().numpy(), tol["atol"],
                                   title=f"{title} · L{layer} h{head} per position"), Text()]
    return Group(*parts) if parts else Text("no diffs")


def versus_panel(comparison, layer: int, head: int) -> list:
    """The Diff tab's "vs B": the attention output's max |Δ| per layer × head (✗ where the output or
    the probabilities cross the tolerance), the first divergence, and the selected head per position."""
    if isinstance(comparison, str):
        return [Text(f"vs B: {comparison}", style="red"), Text()]
    name = comparison.run_b.model.name
    tol = comparison.tolerance
    parts = [DiffMap(comparison.output_max, comparison.heads_over,
                     title=f"vs {name} · max |Δ| of the attention output per layer × head · tolerance atol "
                     f"{tol.atol:.0e} rtol {tol.rtol:.0e}"),
             Text(comparison.checks()[0].message, style="green" if comparison.checks()[0].passed else "red"), Text()]
    row = comparison.output[layer].row_max
    if row is not None:
        parts += [PositionDiff(row[0, head].cpu().numpy(), tol.atol,
                               title=f"vs {name} · L{layer} h{head} per position"), Text()]
    return parts
