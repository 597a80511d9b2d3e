"""The heatmap pane: one head (or its kv group) with a cell cursor, zoom and log scale.

Overview: the whole matrix pooled (max) to the pane. `+` zooms into the exact cells around the
cursor, `-` returns to the overview. Arrow keys move the cursor (and scroll when zoomed); every move
posts `CursorMoved` with the cell's query token, key token, weight, raw scaled score and mask state.
The cells shown are those of the pane's current size: a resize recomputes them (and the title).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.color import Color
from textual.filter import ANSIToTruecolor, LineFilter
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget
from textual.worker import Worker, get_current_worker

from attnscope.render.colors import in_color
from attnscope.render.heatmap import HeadMap, Heatmap, Line, head_map, label, map_heatmap, small_multiples
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
        self.acted_on: set[tuple[int, int]] = set()  # (layer, head) whose attention output the run replaced
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
        self._ahead: dict[tuple, list[Strip]] = {}  # the neighbouring heads drawn ahead (`draw_ahead`)
        self._ahead_for = None  # the result they are of
        self._shown_ahead_key = None  # the key of the strips shown, when they would be drawn ahead as they are
        self._drawing_ahead: Worker[None] | None = None

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
        """Line API: the map is rendered once per change of state or size and kept as strips (or was
        drawn ahead, `draw_ahead`)."""
        return self._line(y, self._look())

    def _line(self, y: int, look: tuple) -> Strip:
        key = (self.size, self._generation, look)
        if key != self._strips_key:
            if self._shown_ahead_key is not None and self._ahead_for is self.result:  # the head left is a neighbour
                self._ahead[self._shown_ahead_key] = self._strips
            ahead_key = self._ahead_key(self.layer_idx, self.head_idx, look) if self._as_after_a_switch() else None
            ahead = self._ahead.get(ahead_key) if ahead_key and self._ahead_for is self.result else None
            self._strips = ahead if ahead is not None else self._strips_of(self.renderable(), look)
            self._strips_key, self._shown_ahead_key = key, ahead_key
        return self._strips[y] if y < len(self._strips) else Strip.blank(self.size.width, look[1])

    def render_lines(self, crop: Region) -> list[Strip]:
        """The strips themselves when Textual's styles add nothing to them (no border, padding, outline,
        tint, hatch or opacity, as in this app), so that the escape sequences kept with a strip drawn ahead
        are those the terminal is sent; otherwise as any widget's."""
        styles = self.styles
        if (
            styles.gutter.totals != (0, 0)
            or any(edge for edge, _ in styles.outline)
            or styles.tint.a
            or styles.text_opacity != 1.0
            or self.opacity != 1.0
            or (styles.has_rule("hatch") and styles.hatch != "none")
        ):
            return super().render_lines(crop)
        look = self._look()
        strips = [self._line(y, look) for y in crop.line_range]
        if filters := self.get_line_filters():
            background = self.background_colors[1]
            for line_filter in filters:
                strips = [strip.apply_filter(line_filter, background) for strip in strips]
        if crop.column_span != (0, self.size.width):
            strips = [strip.crop(*crop.column_span) for strip in strips]
        return strips

    def _look(self) -> tuple:
        """What the strips depend on besides the state: the pane's style and background, the color mode,
        and Textual's ANSI-to-RGB filter (which changes with the theme)."""
        truecolor = next((f for f in super().get_line_filters() if isinstance(f, ANSIToTruecolor)), None)
        return (self.size, self.rich_style, self.background_colors[1], self.color, truecolor)

    def _strips_of(self, renderable, look: tuple) -> list[Strip]:
        """`renderable` drawn as the pane's strips (`look`: `_look()`)."""
        (width, _), base, background, _, truecolor = look
        console = self.app.console
        if isinstance(renderable, Heatmap):
            lines = renderable.lines(console, width, base)  # the cells' lines come whole: no line splitting
        else:
            options = console.options.update_width(width)
            lines = [
                Line(line, 0, Segment.get_line_length(line))
                for line in console.render_lines(renderable, options, style=base, pad=False)
            ]
        return [self._strip(line, width, base, truecolor, background) for line in lines]

    @staticmethod
    def _strip(line: Line, width: int, base: Style, truecolor: ANSIToTruecolor | None, background: Color) -> Strip:
        """A line as the pane's strip: padded to the width, and through Textual's ANSI-to-RGB filter
        (`get_line_filters`) on `background` except for the cells of the map, which it would leave as they are."""
        segments, cells, length = line
        if length > width:  # a pane narrower than the map's smallest width: cropped, as Textual does
            segments, cells, length = list(Strip(segments, length).adjust_cell_length(width, base)), 0, width
        plain = len(segments) - cells
        head, cells_ = segments[:plain], segments[plain:]
        tail = [Segment(" " * (width - length), base)] if length < width else []
        if truecolor is not None:
            head, tail = truecolor.apply(head, background), truecolor.apply(tail, background)
        return Strip(head + cells_ + tail, width)

    def get_line_filters(self) -> Sequence[LineFilter]:
        """Textual's filters but the one from ANSI to RGB colors, which `render_line` applies itself: run by
        Textual, it looks up every cell's style in a cache of 1024 that a map with thousands of colors
        overruns, each frame (~10 ms at 240×70), and leaves them as they are."""
        return [f for f in super().get_line_filters() if not isinstance(f, ANSIToTruecolor)]

    # ---- drawing ahead -----------------------------------------------------------------------
    def _as_after_a_switch(self) -> bool:
        """Whether the state is the one a head switch leaves (`show`): the overview, the cursor at its origin."""
        return self.result is not None and not (self.group or self.zoomed) and self.cursor == (0, 0)

    def _ahead_key(self, layer: int, head: int, look: tuple) -> tuple:
        return (layer, head, self.log_scale, look)

    def _neighbours(self) -> list[tuple[int, int]]:
        """The heads a switch goes to next: the next and the previous one in the navigator's order."""
        n_heads, n_layers = self.result.n_heads, self.result.n_layers
        at = self.layer_idx * n_heads + self.head_idx
        return [divmod((at + step) % (n_layers * n_heads), n_heads) for step in (1, -1)]

    def _draw_ahead_soon(self) -> None:
        """After a frame: draw the neighbouring heads in the background (`draw_ahead`) unless they are."""
        if not self._as_after_a_switch() or self.size.width == 0 or not self.is_on_screen:
            return  # a zoom or a moved cursor, or a hidden tab: nothing to draw for a switch
        look = self._look()
        wanted = [self._ahead_key(layer, head, look) for layer, head in self._neighbours()]
        if self._ahead_for is not self.result:
            self._ahead, self._ahead_for = {}, self.result
        self._ahead = {key: strips for key, strips in self._ahead.items() if key in wanted}
        if all(key in self._ahead for key in wanted):
            return
        result = self.result

        async def work() -> None:
            await self.draw_ahead(result, look)

        self._drawing_ahead = self.run_worker(work, exclusive=True, group="draw-ahead")

    async def draw_ahead(self, result, look: tuple) -> None:
        """Draw the neighbouring heads' overviews (those already pooled, see `prewarm`) as strips, with the
        escape sequences each strip is sent as, a few lines at a time while the app is idle: a switch to
        one of them then only shows them. Runs on the event loop (an async worker): a key pressed
        meanwhile waits for a few lines, not for a map."""
        capacity = self._capacity()
        console = self.app.console
        for layer, head in self._neighbours():
            key = self._ahead_key(layer, head, look)
            view = self._overviews.get((id(result), layer, head, capacity))
            if key in self._ahead or view is None:
                continue
            strips = self._strips_of(self._heatmap(layer, head, view, cursor=(0, 0), zoomed=False), look)
            for n, strip in enumerate(strips):
                strip.render(console)  # kept with the strip: the compositor sends it as it is (`render_lines`)
                if n % 8 == 7:
                    await asyncio.sleep(0)
            if result is not self.result or look != self._look():
                return
            self._ahead[key] = strips

    def no_result(self, placeholder: str) -> None:
        """Say `placeholder` while there is no result to draw (a run that is starting, or failed)."""
        self.placeholder = placeholder
        self._changed()

    def _changed(self) -> None:
        """The state changed: draw the map again on the next frame, and then the neighbouring heads ahead."""
        self._generation += 1
        self.refresh()
        self.call_after_refresh(self._draw_ahead_soon)

    def renderable(self):
        """The rich renderable of the current state (a heatmap, or the kv group's heatmaps)."""
        if self.result is None:
            return Text(self.placeholder, style="dim")
        if self.group:
            return self._render_group()
        return self._heatmap(self.layer_idx, self.head_idx, self.current(), self.cursor, self.zoomed)

    def _heatmap(self, layer: int, head: int, view: HeadMap, cursor: tuple[int, int], zoomed: bool) -> Heatmap:
        rec = self.result.records[layer]
        mode = "zoomed, exact cells" if zoomed else ("exact" if view.exact else "overview")
        title = f"layer {layer} · head {head} (kv {head // rec.group_size}) · {rec.mask!r} · {mode}"
        if (layer, head) in self.acted_on:  # the weights are the head's own; what it passes on is not
            title += " · ⊘ output replaced"
        return map_heatmap(
            self.result,
            layer,
            head,
            view,
            title=title,
            log=self.log_scale,
            cursor=cursor,
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
