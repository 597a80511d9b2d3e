"""A terminal heatmap of one attention head: query tokens down the side, key tokens along the top.

Each cell is one (query, key) weight drawn as a colored block (viridis, scaled to the map's maximum).
Masked cells show as a dim dot, distinct from a zero weight. Without color (NO_COLOR, or output
that is not a terminal) cells use the shade ramp " ░▒▓█" so the map still reads in a log file. Maps
larger than the space are max-pooled; the title says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from attnscope.pooling import pool2d
from attnscope.render.colors import shade, viridis

LABEL_WIDTH = 14


def label(text: str, width: int) -> str:
    text = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")
    return text if len(text) <= width else text[: width - 1] + "…"


class Heatmap:
    """Rich renderable of an attention map.

    Args:
        weights: [Sq, Sk] float probabilities.
        allowed: [Sq, Sk] bool mask (True = may attend).
        query_labels / key_labels: token texts of the rows and columns.
        query_offset: absolute position of the first query row.
        title: shown above the map.
        max_rows: at most this many lines of cells (longer maps are pooled).
    """

    def __init__(self, weights, allowed, query_labels: Sequence[str], key_labels: Sequence[str],
                 query_offset: int = 0, title: str = "", max_rows: int = 48):
        self.weights = np.asarray(weights, dtype=np.float32)
        self.allowed = np.asarray(allowed, dtype=bool)
        self.query_labels = list(query_labels)
        self.key_labels = list(key_labels)
        self.query_offset = query_offset
        self.title = title
        self.max_rows = max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        Sq, Sk = self.weights.shape
        cols = max(8, options.max_width - LABEL_WIDTH - 8)
        w, re, ce = pool2d(self.weights, self.max_rows, cols, "max")
        a, _, _ = pool2d(self.allowed, self.max_rows, cols, "any")
        top = float(w.max()) if w.size and np.isfinite(w).all() and w.max() > 0 else 1.0
        color = console.color_system is not None
        pooled = w.shape != self.weights.shape
        note = f"{Sq}×{Sk} → {w.shape[0]}×{w.shape[1]}, max-pooled" if pooled else f"{Sq}×{Sk}"
        yield Text(f"{self.title}  ({note}; color scale 0 … {top:.3f})", style="bold")
        axis = [" "] * w.shape[1]
        for j in range(0, w.shape[1], 10):
            for n, ch in enumerate(str(ce[j])):
                if j + n < len(axis):
                    axis[j + n] = ch
        yield Text(" " * (LABEL_WIDTH + 6) + "".join(axis), style="dim")
        for i in range(w.shape[0]):
            line = Text()
            pos = self.query_offset + re[i]
            text = label(self.query_labels[re[i]], LABEL_WIDTH) if not pooled else ""
            line.append(f"{pos:>5} {text:<{LABEL_WIDTH}}", style="dim")
            for j in range(w.shape[1]):
                x = float(w[i, j]) / top
                if not a[i, j]:
                    line.append("·", style="grey30")
                elif not np.isfinite(w[i, j]):
                    line.append("!", style="bold red")
                elif color:
                    line.append("█", style=viridis(x))
                else:
                    line.append(shade(x))
            yield line
