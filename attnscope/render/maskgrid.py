"""The mask grid: one cell per (query, key) — allowed, masked, or in a fully-masked row — and the
tile map of a block grid. Large masks are summarized into the available size (a cell then shows
whether its region is fully allowed, partly allowed or fully masked), as torch's
``BlockMask.to_string`` does.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from attnscope.pooling import pool2d
from attnscope.render.axes import axis

ALLOWED, PARTLY, MASKED, EMPTY_ROW = "█", "▒", "·", "×"
STYLES = {ALLOWED: "green", PARTLY: "yellow", MASKED: "grey42", EMPTY_ROW: "bold red"}
TILE_GLYPHS = {0: MASKED, 1: PARTLY, 2: ALLOWED}  # empty / partial / full tiles


class MaskGrid:
    """Rich renderable of a dense mask.

    Args:
        allowed: bool [Sq, Sk].
        q_offset: absolute position of the first query row (past = Sk - Sq).
        title: shown above the grid.
        max_rows: lines of cells at most; larger masks are summarized.
    """

    def __init__(self, allowed, q_offset: int = 0, title: str = "", max_rows: int = 48):
        self.allowed = np.asarray(allowed, dtype=bool)
        self.q_offset = q_offset
        self.title = title
        self.max_rows = max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        Sq, Sk = self.allowed.shape
        cols = max(8, options.max_width - 8)
        frac, re, ce = pool2d(self.allowed.astype(np.float32), self.max_rows, cols, "mean")
        empty_rows, _, _ = pool2d(~self.allowed.any(axis=1, keepdims=True), self.max_rows, 1, "any")
        summarized = frac.shape != self.allowed.shape
        note = f"{Sq}×{Sk} → {frac.shape[0]}×{frac.shape[1]}, summarized" if summarized else f"{Sq}×{Sk}"
        yield Text(f"{self.title}  ({note})", style="bold")
        yield Text(" " * 7 + axis(ce, frac.shape[1]), style="dim")
        for i in range(frac.shape[0]):
            line = Text(f"{self.q_offset + re[i]:>6} ", style="dim")
            for j in range(frac.shape[1]):
                if empty_rows[i, 0] and frac[i, j] == 0:
                    glyph = EMPTY_ROW
                else:
                    glyph = ALLOWED if frac[i, j] == 1 else MASKED if frac[i, j] == 0 else PARTLY
                line.append(glyph, style=STYLES[glyph])
            yield line
        legend = Text()
        for glyph, name in ((ALLOWED, "allowed"), (MASKED, "masked"), (EMPTY_ROW, "row with no key")):
            legend.append(glyph, style=STYLES[glyph]).append(f" {name}  ")
        if summarized:
            legend.append(PARTLY, style=STYLES[PARTLY]).append(" partly allowed")
        yield legend


class TileMap:
    """Rich renderable of a block map: states [rows, cols] of EMPTY (0) / PARTIAL (1) / FULL (2)."""

    def __init__(self, states, block_m: int, block_n: int, sparsity: float):
        self.states = np.asarray(states)
        self.block_m, self.block_n, self.sparsity = block_m, block_n, sparsity

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows, cols = self.states.shape
        counts = {name: int((self.states == s).sum()) for s, name in ((2, "full"), (1, "partial"), (0, "empty"))}
        yield Text(f"{rows}×{cols} tiles of {self.block_m}×{self.block_n}: {counts['full']} full · "
                   f"{counts['partial']} partial · {counts['empty']} empty (skipped: sparsity {self.sparsity:.1%})",
                   style="bold")
        width = max(4, (options.max_width - 7) // 2)
        full, re, _ = pool2d((self.states == 2).astype(np.float32), 32, width, "mean")
        empty, _, _ = pool2d((self.states == 0).astype(np.float32), 32, width, "mean")
        if full.shape != self.states.shape:
            yield Text(f"(summarized to {full.shape[0]}×{full.shape[1]} cells)", style="dim")
        for i in range(full.shape[0]):
            line = Text(f"{re[i] * self.block_m:>6} ", style="dim")
            for j in range(full.shape[1]):
                glyph = ALLOWED if full[i, j] == 1 else MASKED if empty[i, j] == 1 else PARTLY
                line.append(glyph * 2, style=STYLES[glyph])
            yield line


def mask_view(spec, q_len: int, k_len: int, *, block: tuple[int, int] | None = None, head: int = 0,
              title: str | None = None) -> Group:
    """A mask as drawn by ``attnscope mask`` and the TUI's Mask tab: the grid (rows labelled with
    absolute positions when there is a past), the rows that have no key, and the tile map."""
    past = k_len - q_len
    allowed = spec.dense(q_len, k_len)
    allowed = allowed[0, min(head, allowed.shape[1] - 1)]  # (Sq, Sk)
    rows = spec.fully_masked_rows(q_len, k_len)
    empty = rows[0, min(head, rows.shape[1] - 1)].nonzero().flatten().tolist()
    if title is None:
        title = f"{spec!r} · q {q_len} × k {k_len}" + (f" · past {past} (rows are absolute positions)" if past else "")
    parts = [MaskGrid(allowed.cpu().numpy(), q_offset=past, title=title)]
    if empty:
        parts.append(Text(f"{len(empty)} row(s) with no allowed key: positions "
                          + ", ".join(str(i + past) for i in empty[:20]), style="red"))
    if block is not None:
        tiles = spec.blocks(q_len, k_len, *block)
        states = tiles.states[0, min(head, tiles.states.shape[1] - 1)]
        parts.append(TileMap(states.cpu().numpy(), *block, tiles.sparsity))
    return Group(*parts)


def layer_mask_panel(record, layer: int, head: int) -> Group:
    """The TUI's Mask tab: a layer's mask spec, its grid for one head and the 16×16 tile map."""
    Sq, Sk = record.shape
    return Group(Text(f"layer {layer} · mask spec: {record.mask!r}", style="bold"), Text(),
                 mask_view(record.mask, Sq, Sk, block=(16, 16), head=head, title=f"head {head}"))
