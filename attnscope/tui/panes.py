"""The panes beside the heatmap: each owns its content, drawn from reactive state the app sets.

- `MaskPane`, `DiffPane`: the selected layer's mask and the checks' differences (and those against
  the ``--compare`` model), for `selection` (layer, head) of `result`; built when painted, so a hidden
  tab costs nothing on a head switch.
- `ChecksPane`: one row per finding (rows arrive live with `add_check`); enter on a row is the app's
  jump to the finding's place.
- `TokensPane`: the prompt's tokens and the continuation; enter on a prompt token selects its row.
- `Details`: the cell under the heatmap's cursor; `StatusLine`: progress of the run.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, ProgressBar, Static


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

    result = reactive(None, always_update=True, init=False)
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
    comparison = None  # against the --compare model, set with the result

    def content(self, result, layer: int, head: int):
        from attnscope.render.diffmap import diff_panel

        return diff_panel(result, layer, head, self.comparison)


class ChecksPane(DataTable):
    """One row per check: ✓/✗, name, worst figure, where, the finding. Row keys are check names."""

    def on_mount(self) -> None:
        self.add_columns("", "check", "worst", "where", "finding")

    def add_check(self, check) -> None:
        from attnscope.render.tables import where_text, worst_figure

        mark = Text("✓", style="green") if check.passed else Text("✗", style="bold red")
        self.add_row(mark, check.name, worst_figure(check), where_text(check),
                     Text(check.message, style="" if check.passed else "red"), key=check.name)


class TokensPane(DataTable):
    """pos, id, token text; the continuation below the prompt. Row keys: q<pos> / c<i>."""

    result = reactive(None, always_update=True, init=False)

    def on_mount(self) -> None:
        self.add_columns("pos", "id", "token", "")

    def watch_result(self, result) -> None:
        self.clear()
        if result is None:
            return
        for pos, (tid, text) in enumerate(zip(result.ids, result.tokens, strict=True)):
            self.add_row(str(pos), str(tid), repr(text), "", key=f"q{pos}")
        cont = result.continuation_ids
        for i, (tid, text) in enumerate(zip(cont, result.token_texts(cont), strict=True)):
            self.add_row(str(len(result.ids) + i), str(tid), repr(text),
                         Text("continuation (n adds it)", style="dim"), key=f"c{i}")


class Details(Widget):
    """The cell details under the heatmap: fixed height, so an update redraws it without a layout pass."""

    info = reactive("", layout=False)

    def render(self) -> Text:
        return Text(self.info)


class StatusLine(Horizontal):
    """What the app is doing, and a progress bar over the forward's layers and the checks."""

    def compose(self) -> ComposeResult:
        yield Static("", id="status")
        yield ProgressBar(id="progress", show_eta=False)

    def say(self, markup: str) -> None:
        self.query_one("#status", Static).update(Text.from_markup(markup))

    def start(self, loading: bool) -> None:
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.say("loading the model …" if loading else "running …")

    def captured(self, layer: int, n_layers: int, n_checks: int) -> None:
        self.query_one(ProgressBar).update(total=n_layers + n_checks, progress=layer + 1)
        self.say(f"forward: layer {layer + 1}/{n_layers} captured")

    def check(self, check, done: int, total: int) -> None:
        self.query_one(ProgressBar).advance(1)
        self.say(f"checks {done}/{total}: {check.name} {'✓' if check.passed else '✗'}")

    def finished(self, result) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        failed = [c.name for c in result.checks if not c.passed]
        self.say(f"{len(result.ids)} tokens · {result.n_layers} layers · checks: "
                 + (f"[red]{', '.join(failed)} failed[/red]" if failed else "[green]all passed[/green]"))

    def failed(self) -> None:
        self.query_one(ProgressBar).update(total=1, progress=0)
        self.say("[red]stopped: fix the model or the prompt and press enter[/red]")
