"""The heatmap pane: one head (or its kv group) with a cell cursor, zoom and log scale.

Overview: the whole matrix pooled (max) to the pane. `+` zooms into the exact cells around the
cursor, `-` returns to the overview. Arrow keys move the cursor (and scroll when zoomed); every move
posts `CursorMoved` with the cell's query token, key token, weight, raw scaled score and mask state.
The cells shown are those of the pane's current size: a resize recomputes them (and the title).
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.binding import Binding
from textual.strip import Strip
from textual.widget import Widget
from textual.worker import get_current_worker

from attnscope.render.colors import in_color
from attnscope.render.heatmap import HeadMap, Heatmap, head_map, label, map_heatmap, small_multiples
from attnscope.tui.messages import CursorMoved

NO_PROMPT = "no prompt yet: type one in the field above and press enter (nothing runs until then)"
WAITING = "waiting for the model …"
FAILED = "no map: the run failed (its error is shown above)"


class HeatmapView(Widget, can_focus=True):
    BINDINGS = [
        Binding("up", "move(-1, 0)", "up", show=False),
        Binding("down", "move(1, 0)", "down", show=False),
        Binding("left", "move(0, -1)", "left", show=False),
        Binding("right", "move(0, 1)", "right", show=False),
        Binding("plus,equals_sign", "zoom_in", "zoom in"),
        Binding("minus", "zoom_out", "overview"),
        Binding("l", "toggle_log", "log scale"),
        Binding("g", "toggle_group", "GQA group"),
    ]
    DEFAULT_CSS = """
    HeatmapView { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.result = None
        self.placeholder = NO_PROMPT  # what the view says while it has no result
        self.layer_idx = 0
        self.head_idx = 0
        self.log_scale = False
        self.group = False
        self.zoomed = False
        self.origin = (0, 0)  # first query row / key column shown when zoomed
        self.cursor = (0, 0)  # in shown cells
        self._view: HeadMap | None = None
        self._view_capacity = None  # the capacity `_view` was computed for
        self._strips: list[Strip] = []
        self._strips_key = None
        self._generation = 0
        self._overviews: dict = {}  # (result, layer, head, capacity) -> overview HeadMap

    # ---- state -------------------------------------------------------------------------------
    def show(self, result, layer: int | None = None, head: int | None = None, keep_cursor: bool = False) -> None:
        self.result = result
        if layer is not None:
            self.layer_idx, self.head_idx = layer, head
        if not keep_cursor:
            self.zoomed, self.origin, self.cursor = False, (0, 0), (0, 0)
        self._view = None
        self._changed()
        self._announce()

    def focus_position(self, position: int, key: int | None = None) -> None:
        """Put the cursor on a query position (and key), zooming in when the map is pooled."""
        if self.result is None:
            return
        Sq, Sk = self.result.records[self.layer_idx].shape
        q = position - (Sk - Sq)
        view = self.current()
        if not view.exact:
            self.zoomed = True
        (rows, cols), _ = self._capacity()
        if self.zoomed:
            self.origin = (max(0, min(q - rows // 2, Sq - rows)), max(0, min((key or q) - cols // 2, Sk - cols)))
        self._view = None
        view = self.current()
        i = int(np.searchsorted(view.row_edges, q, side="right") - 1)
        k = key if key is not None else min(q + Sk - Sq, Sk - 1)
        j = int(np.searchsorted(view.col_edges, k, side="right") - 1)
        self.cursor = (max(0, min(i, len(view.row_edges) - 2)), max(0, min(j, len(view.col_edges) - 2)))
        self._changed()
        self._announce()

    @property
    def color(self) -> bool:
        """Half blocks in color, or the shade ramp when color is off (NO_COLOR: Textual then draws
        every color in grays, and masked cells and NaN would not stand out)."""
        return in_color(self.app.console) and not self.app.no_color

    def _capacity(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(rows, columns) of cells that fit: of an exact map, with token labels left of it and up to
        four lines of key tokens under its axis, and of a pooled overview, with positions only."""
        color = self.color
        per_line = 2 if color else 1
        exact, pooled = (
            (per_line * self._map_lines(exact), max(8, self.size.width - Heatmap.label_width(color, tokens=exact) - 1))
            for exact in (True, False)
        )
        return exact, pooled

    def _map_lines(self, exact: bool) -> int:
        """Lines of cells: the pane less the title (two lines when it wraps), axis, key tokens, colorbar."""
        return max(4, self.size.height - (8 if exact else 5))

    def current(self) -> HeadMap:
        """The cells shown now, for the pane's size now (a frame drawn before the resize event is
        handled already gets the new size's cells)."""
        capacity = self._capacity()
        if self._view is None or self._view_capacity != capacity:
            if self._view is not None and self.zoomed:  # resized: the window keeps the cell under the cursor
                self._keep_in_window(self._view, *capacity[0])
            self._view = self.compute_view(
                self.result, self.layer_idx, self.head_idx, self.zoomed, self.origin, capacity
            )
            self._view_capacity = capacity
            rows, cols = self._view.weights.shape
            self.cursor = (max(0, min(self.cursor[0], rows - 1)), max(0, min(self.cursor[1], cols - 1)))
        return self._view

    def compute_view(
        self,
        result,
        layer: int,
        head: int,
        zoomed: bool,
        origin: tuple[int, int],
        capacity: tuple[tuple[int, int], tuple[int, int]],
    ) -> HeadMap:
        """The cells shown for a head (`attnscope.render.heatmap.head_map`); the overviews are kept
        (and computed ahead by `prewarm`), so switching heads does not recompute them."""
        key = (id(result), layer, head, capacity)
        if zoomed:
            return head_map(result, layer, head, *capacity, origin=origin)
        if key not in self._overviews:
            if len(self._overviews) > 4 * 1024:
                self._overviews.clear()
            self._overviews[key] = head_map(result, layer, head, *capacity)
        return self._overviews[key]

    def prewarm(self, result, cancelled=lambda: False) -> None:
        """Compute every head's overview for the current size (called from a worker thread) until
        `cancelled()`."""
        capacity = self._capacity()
        for layer in range(result.n_layers):
            for head in range(result.n_heads):
                if cancelled():
                    return
                self.compute_view(result, layer, head, False, (0, 0), capacity)

    # ---- rendering ---------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        """Line API: the map is rendered once per change of state or size and kept as strips."""
        key = (self.size, self._generation)
        if key != self._strips_key:
            console, width, base = self.app.console, self.size.width, self.rich_style
            renderable = self.renderable()
            if isinstance(renderable, Heatmap):
                lines = renderable.lines(console, width, base)  # the cells' lines come whole: no line splitting
            else:
                lines = console.render_lines(renderable, console.options.update_width(width), style=base, pad=False)
            self._strips = [Strip(line).adjust_cell_length(width, base) for line in lines]
            self._strips_key = key
        return self._strips[y] if y < len(self._strips) else Strip.blank(self.size.width, self.rich_style)

    def no_result(self, placeholder: str) -> None:
        """Say `placeholder` while there is no result to draw (a run that is starting, or failed)."""
        self.placeholder = placeholder
        self._changed()

    def _changed(self) -> None:
        """The state changed: draw the map again on the next frame."""
        self._generation += 1
        self.refresh()

    def renderable(self):
        """The rich renderable of the current state (a heatmap, or the kv group's heatmaps)."""
        if self.result is None:
            return Text(self.placeholder, style="dim")
        if self.group:
            return self._render_group()
        view = self.current()
        rec = self.result.records[self.layer_idx]
        mode = "zoomed, exact cells" if self.zoomed else ("exact" if view.exact else "overview")
        title = (
            f"layer {self.layer_idx} · head {self.head_idx} (kv {self.head_idx // rec.group_size}) · "
            f"{rec.mask!r} · {mode}"
        )
        return map_heatmap(
            self.result,
            self.layer_idx,
            self.head_idx,
            view,
            title=title,
            log=self.log_scale,
            cursor=self.cursor,
            max_lines=self._map_lines(view.exact),
            color=self.color,
        )

    def _render_group(self):
        group_size = self.result.records[self.layer_idx].group_size
        kv = self.head_idx // group_size
        return small_multiples(
            self.result,
            self.layer_idx,
            range(kv * group_size, (kv + 1) * group_size),
            width=self.size.width,
            cell_width=32,
            max_lines=max(4, (self.size.height - 6) // 2),
            log=self.log_scale,
            color=self.color,
            title=f"layer {self.layer_idx} · kv head {kv}: its {group_size} query heads (g to leave)",
            label=lambda h: f"h{h}" + (" ◀" if h == self.head_idx else ""),
        )

    # ---- actions -----------------------------------------------------------------------------
    def action_move(self, di: int, dj: int) -> None:
        if self.result is None:
            return
        view = self.current()
        rows, cols = view.weights.shape
        i, j = self.cursor[0] + di, self.cursor[1] + dj
        if self.zoomed:
            Sq, Sk = self.result.records[self.layer_idx].shape
            q0, k0 = self.origin
            if i < 0 and q0 > 0 or i >= rows and q0 + rows < Sq:
                self.origin = (max(0, min(Sq - rows, q0 + di)), k0)
                self._view = None
                i = self.cursor[0]
            if j < 0 and k0 > 0 or j >= cols and k0 + cols < Sk:
                self.origin = (self.origin[0], max(0, min(Sk - cols, k0 + dj)))
                self._view = None
                j = self.cursor[1]
        self.cursor = (max(0, min(rows - 1, i)), max(0, min(cols - 1, j)))
        self._changed()
        self._announce()

    def action_zoom_in(self) -> None:
        if self.result is None or self.zoomed:
            return
        view = self.current()
        if view.exact:
            self.app.notify("the whole map is already shown cell by cell")
            return
        q, k = int(view.row_edges[self.cursor[0]]), int(view.col_edges[self.cursor[1]])
        self.zoomed = True
        Sq, Sk = self.result.records[self.layer_idx].shape
        self.focus_position(q + Sk - Sq, k)

    def action_zoom_out(self) -> None:
        if self.zoomed:
            self.zoomed, self.origin, self.cursor, self._view = False, (0, 0), (0, 0), None
            self._changed()
            self._announce()

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self._changed()

    def action_toggle_group(self) -> None:
        self.group = not self.group
        self._changed()

    def _keep_in_window(self, view: HeadMap, rows: int, cols: int) -> None:
        """Move the zoomed window (`rows` × `cols` cells) so that it still holds the cell under the cursor."""
        q = int(view.row_edges[min(self.cursor[0], len(view.row_edges) - 2)])
        k = int(view.col_edges[min(self.cursor[1], len(view.col_edges) - 2)])
        q0, k0 = self.origin
        q0 = q0 if q0 <= q < q0 + rows else max(0, q - rows + 1)
        k0 = k0 if k0 <= k < k0 + cols else max(0, k - cols + 1)
        self.origin, self.cursor = (q0, k0), (q - q0, k - k0)

    def on_resize(self) -> None:
        """Draw the cells of the new size; the overviews of the other heads are computed again ahead."""
        if self.result is not None:
            self.current()
            self._announce()
            self.prewarm_in_background(self.result)
        self._changed()

    def prewarm_in_background(self, result) -> None:
        """`prewarm` in a worker thread (the newest call cancels the one before)."""

        def work() -> None:
            worker = get_current_worker()
            self.prewarm(result, lambda: worker.is_cancelled)

        self.run_worker(work, thread=True, exclusive=True, group="prewarm")

    # ---- details -----------------------------------------------------------------------------
    def cell_info(self) -> str:
        """What the details panel shows for the cell under the cursor."""
        if self.result is None:
            return ""
        view = self.current()
        rec = self.result.records[self.layer_idx]
        Sq, Sk = rec.shape
        past = Sk - Sq
        i, j = self.cursor
        q0, q1 = int(view.row_edges[i]), int(view.row_edges[i + 1])
        k0, k1 = int(view.col_edges[j]), int(view.col_edges[j + 1])
        tokens = self.result.tokens
        weight = float(view.weights[i, j])
        if q1 - q0 == 1 and k1 - k0 == 1:
            score = rec.score(self.head_idx, q0, k0)
            state = "allowed" if view.allowed[i, j] else "masked"
            formula = "q·k·scale" if rec.softcap is None else f"{rec.softcap:g}·tanh(q·k·scale / {rec.softcap:g})"
            return (
                f"query {past + q0} {label(tokens[past + q0], 20)!s}  →  key {k0} {label(tokens[k0], 20)!s}\n"
                f"weight {weight:.6f}   scaled score {formula} {score:+.4f}   mask: {state}"
            )
        return (
            f"queries {past + q0}–{past + q1 - 1} × keys {k0}–{k1 - 1} (pooled cell)\n"
            f"max weight {weight:.6f}   mask: {'some allowed' if view.allowed[i, j] else 'masked'}   "
            "(+ to zoom into exact cells)"
        )

    def _announce(self) -> None:
        self.post_message(CursorMoved(self.cell_info()))
