"""The mask grid: one cell per (query, key) — allowed, masked, or in a fully-masked row — and the
tile map of a block grid. Large masks are summarized into the available size (a cell then shows
whether its region is fully allowed, partly allowed or fully masked), as torch's
``BlockMask.to_string`` does; the counts come from `attnscope.masks.scan`, which never
materializes the dense mask, so a mask of a million positions draws as fast as a small one.
"""

from __future__ import annotations

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from attnscope import masks
from attnscope.pooling import pool2d
from attnscope.render.axes import axis

ALLOWED, PARTLY, MASKED, EMPTY_ROW = "█", "▒", "·", "×"
STYLES = {ALLOWED: "green", PARTLY: "yellow", MASKED: "grey42", EMPTY_ROW: "bold red"}
TILE_GLYPHS = {0: MASKED, 1: PARTLY, 2: ALLOWED}  # empty / partial / full tiles


class MaskGrid:
    """Rich renderable of a scanned mask (`attnscope.masks.scan`): its grid of bins, each allowed,
    masked or partly allowed, and the bins that hold a row with no key.

    Args:
        found: the scan, with the grid already sized to the screen.
        title: shown above the grid.
    """

    def __init__(self, found: masks.MaskScan, title: str = ""):
        self.found = found
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        found = self.found
        counts, cells = found.grid.numpy(), found.grid_cells.numpy()
        re, ce = found.row_edges.numpy(), found.col_edges.numpy()
        empty_rows, _, _ = pool2d((found.row_allowed == 0).numpy()[:, None], len(re) - 1, 1, "any")
        summarized = counts.shape != (found.q_len, found.k_len)
        shape = f"{found.q_len}×{found.k_len}"
        note = f"{shape} → {counts.shape[0]}×{counts.shape[1]}, summarized" if summarized else shape
        yield Text(f"{self.title}  ({note})", style="bold")
        yield Text(" " * 7 + axis(ce, counts.shape[1]), style="dim")
        past = found.k_len - found.q_len
        for i in range(counts.shape[0] if found.q_len else 0):
            line = Text(f"{past + re[i]:>6} ", style="dim")
            for j in range(counts.shape[1] if found.k_len else 0):
                if empty_rows[i, 0] and counts[i, j] == 0:
                    glyph = EMPTY_ROW
                else:
                    glyph = ALLOWED if counts[i, j] == cells[i, j] else MASKED if counts[i, j] == 0 else PARTLY
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
        yield Text(
            f"{rows}×{cols} tiles of {self.block_m}×{self.block_n}: {counts['full']} full · "
            f"{counts['partial']} partial · {counts['empty']} empty (skipped: sparsity {self.sparsity:.1%})",
            style="bold",
        )
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


class MaskView:
    """A mask as drawn by ``attnscope mask`` and the TUI's Mask tab: the grid (rows labelled with
    absolute positions when there is a past), the rows that have no key, and the tile map; one
    scan of the mask, sized to the console when drawn."""

    def __init__(
        self,
        spec,
        q_len: int,
        k_len: int,
        *,
        block: tuple[int, int] | None = None,
        head: int = 0,
        title: str | None = None,
        max_rows: int = 48,
    ):
        masks.validate_scan(spec, q_len, k_len, block)
        past = k_len - q_len
        if title is None:
            title = f"{spec!r} · q {q_len} × k {k_len}"
            title += f" · past {past} (rows are absolute positions)" if past else ""
        self.spec, self.q_len, self.k_len, self.block, self.head = spec, q_len, k_len, block, head
        self.title, self.max_rows = title, max_rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        found = masks.scan(
            self.spec,
            self.q_len,
            self.k_len,
            rows=self.max_rows,
            cols=max(8, options.max_width - 8),
            block=self.block,
            head=self.head,
        )
        yield MaskGrid(found, title=self.title)
        empty, past = found.empty_rows.tolist(), self.k_len - self.q_len
        if empty:
            yield Text(
                f"{len(empty)} row(s) with no allowed key: positions " + ", ".join(str(i + past) for i in empty[:20]),
                style="red",
            )
        if found.tiles is not None:
            yield TileMap(found.tiles.numpy(), *self.block, found.sparsity)


def mask_view(
    spec, q_len: int, k_len: int, *, block: tuple[int, int] | None = None, head: int = 0, title: str | None = None
) -> MaskView:
    """The `MaskView` of a spec (a ValueError, with the sizes, for a mask larger than a scan reads)."""
    return MaskView(spec, q_len, k_len, block=block, head=head, title=title)


def layer_mask_panel(record, layer: int, head: int) -> Group:
    """The TUI's Mask tab: a layer's mask spec, its grid for one head and the 16×16 tile map."""
    Sq, Sk = record.shape
    return Group(
        Text(f"layer {layer} · mask spec: {record.mask!r}", style="bold"),
        Text(),
        mask_view(record.mask, Sq, Sk, block=(16, 16), head=head, title=f"head {head}"),
    )
