"""The panes beside the heatmap: each owns its content, drawn from reactive state the app sets.

- `MaskPane`, `DiffPane`: the selected layer's mask and the checks' differences (and those against
  the ``--compare`` model), for `selection` (layer, head) of `result`; built when painted, so a hidden
  tab costs nothing on a head switch.
- `ChecksPane`: one entry per finding (they arrive live with `add_check`), drawn as `attnscope check`
  draws them, so they wrap to the pane's width; enter on one is the app's jump to the finding's place.
- `TokensPane`: the prompt's tokens and the continuation; enter on a prompt token selects its row.
- `Details`: the cell under the heatmap's cursor; `StatusLine`: progress of the run.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from attnscope.tui.messages import JumpTo


class Lazy:
    """A renderable built on first paint (and kept): content of a pane that may never be shown."""

    def __init__(self, build):
        self.build, self.built = build, None

    def __rich_console__(self, console, options):
        if self.built is None:
            self.built = self.build()
        yield self.built


class _SelectionPane(VerticalScroll):
    """A scrolling pane that shows `content(result, layer, head)` of the current selection."""

    result: reactive[Any] = reactive(None, always_update=True, init=False)
    selection: reactive[tuple[int, int]] = reactive((0, 0), init=False)

    def compose(self) -> ComposeResult:
        yield Static("")

    def content(self, result, layer: int, head: int):
        raise NotImplementedError

    def watch_result(self) -> None:
        self._update()

    def watch_selection(self) -> None:
        self._update()

    def _update(self) -> None:
        if self.result is None:
            return
        result, (layer, head) = self.result, self.selection
        self.query_one(Static).update(Lazy(lambda: self.content(result, layer, head)))


class MaskPane(_SelectionPane):
    def content(self, result, layer: int, head: int):
        from attnscope.render.maskgrid import layer_mask_panel

        return layer_mask_panel(result.records[layer], layer, head)


class DiffPane(_SelectionPane):
    comparison: Any = None  # against the --compare model (or why there is none), set with the result
    versus: str | None = None  # what the comparison's run A is (None: model B, by name)
    note: str = ""  # above the maps (what the ablated heads changed)

    def content(self, result, layer: int, head: int):
        from rich.console import Group

        from attnscope.render.diffmap import diff_panel

        panel = diff_panel(result, layer, head, self.comparison, self.versus)
        return Group(Text(self.note), Text(), panel) if self.note else panel


class ChecksPane(OptionList):
    """One entry per check: ✓/✗, name, worst figure, where, the finding, in columns shared by every
    entry, each wrapped to the pane's width. Option ids are check names."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.checks: list = []

    def clear(self) -> None:
        self.checks = []
        self.clear_options()

    def add_check(self, check) -> None:
        from attnscope.render.checks import CheckRow, Columns

        self.checks.append(check)
        columns = Columns.of(self.checks)  # a wider entry widens the columns of every entry
        highlighted = self.highlighted
        self.set_options([Option(CheckRow(c, columns), id=c.name) for c in self.checks])
        self.highlighted = highlighted if highlighted is not None else 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        """Enter on a check jumps to the layer, head and position where it is worst."""
        event.stop()
        where = next(((c.where or {}) for c in self.checks if c.name == event.option.id), {})
        if where.get("layer") is None:
            self.notify(f"{event.option.id}: nothing to jump to", timeout=3)
        else:
            self.post_message(JumpTo(where["layer"], where.get("head"), where.get("position")))


class TokensPane(DataTable):
    """pos, id, token text; the continuation below the prompt, and where it differs from `baseline`'s
    (the continuation without the ablated heads), what that one had. Row keys: q<pos> / c<i>."""

    TOKEN_WIDTH = 15
    result: reactive[Any] = reactive(None, always_update=True, init=False)
    baseline: list[int] | None = None  # the continuation to compare with (set before `result`)

    def on_mount(self) -> None:
        self.add_columns("pos", "id", "token", "")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a prompt token makes it the query row."""
        event.stop()
        key = event.row_key.value
        if key is not None and key.startswith("q"):
            self.post_message(JumpTo(None, None, int(key[1:])))

    def watch_result(self, result) -> None:
        self.clear()
        if result is None:
            return
        for pos, (tid, text) in enumerate(zip(result.ids, result.tokens, strict=True)):
            self.add_row(str(pos), str(tid), self.shown(text), "", key=f"q{pos}")
        cont, was = result.continuation_ids, self.baseline or []
        for i, (tid, text) in enumerate(zip(cont, result.token_texts(cont), strict=True)):
            note = Text("continuation" if i else "n adds it", style="dim")
            if i < len(was) and was[i] != tid:
                note = Text(f"without: {self.shown(result.token_texts([was[i]])[0])}", style="yellow")
            self.add_row(str(len(result.ids) + i), str(tid), self.shown(text), note, key=f"c{i}")

    @staticmethod
    def shown(text: str) -> str:
        """A token as Python writes it, cut to `TOKEN_WIDTH` (the table fits 80 columns: no sideways scroll)."""
        text = repr(text)
        return text if len(text) <= TokensPane.TOKEN_WIDTH else text[: TokensPane.TOKEN_WIDTH - 1] + "…"


class Details(Widget):
    """The cell details under the heatmap: lines of parts (split on three spaces), each line wrapped at
    its parts to the width. Its height follows the lines, and changes only when their count does, so
    most updates redraw it without a layout pass."""

    SEPARATOR = "   "
    info = reactive("", layout=False)

    def wrapped(self) -> list[str]:
        from attnscope.render.checks import pack_parts

        width = max(1, self.content_size.width)
        return [
            out
            for line in self.info.split("\n")
            for out in pack_parts(line.split(self.SEPARATOR), width, self.SEPARATOR, "")
        ]

    def render(self) -> Text:
        return Text("\n".join(self.wrapped()))

    def watch_info(self) -> None:
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        height = max(2, len(self.wrapped())) + self.styles.gutter.height  # and the border above
        if self.styles.height is None or self.styles.height.value != height:
            self.styles.height = height


class StatusLine(Horizontal):
    """What the app is doing, and a progress bar over the forward's layers and the checks while it
    runs (once it is done, the line is the status's: 80 columns leave it ~46)."""

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        yield ProgressBar(id="progress", show_eta=False)

    def say(self, markup: str) -> None:
        text = Text.from_markup(markup)
        text.no_wrap, text.overflow = True, "ellipsis"
        self.query_one("#status", Static).update(text)

    def idle(self) -> None:
        """No prompt yet: nothing runs, so no bar; what to do, and how to quit from the prompt."""
        self.query_one(ProgressBar).display = False
        self.say("type a prompt, enter runs it · ctrl+c quits")

    def start(self, loading: bool) -> None:
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one(ProgressBar).display = True
        self.say("loading the model …" if loading else "running …")

    def captured(self, layer: int, n_layers: int, n_checks: int) -> None:
        self.query_one(ProgressBar).update(total=n_layers + n_checks, progress=layer + 1)
        self.say(f"forward: layer {layer + 1}/{n_layers} captured")

    def stage(self, stage: str) -> None:
        """The map is drawn (`ResultReady`): say what still runs."""
        what = {"statistics": "computing row statistics", "roles": "measuring head roles"}
        self.say(f"{what.get(stage, f'checking {stage}')} …")

    def check(self, check, done: int, total: int) -> None:
        self.query_one(ProgressBar).advance(1)
        self.say(f"checks {done}/{total}: {check.name} {'✓' if check.passed else '✗'}")

    def finished(self, result, refused: str | None = None) -> None:
        """The run is done: its size and its checks, or first the comparison that was `refused`."""
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        bar.display = False
        failed = [c.name for c in result.checks if not c.passed]
        text = Text(f"{len(result.ids)} tokens · {result.n_layers} layers · ", no_wrap=True, overflow="ellipsis")
        if refused:
            text.append(f"no comparison: {refused}", style="red")
        elif failed:  # the count first: the names may not fit
            text.append(f"{len(failed)} of {len(result.checks)} checks failed: {', '.join(failed)}", style="red")
        else:
            text.append("checks: all passed", style="green")
        self.query_one("#status", Static).update(text)

    def failed(self) -> None:
        self.query_one(ProgressBar).update(total=1, progress=0)
        self.query_one(ProgressBar).display = False
        self.say("[red]stopped: fix the model or the prompt and press enter[/red]")
