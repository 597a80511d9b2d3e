"""The right side of the app: the prompt, an error line, the tabs (Heatmap, Mask, Checks, Diff,
Tokens), the ablated heads' line and the status line."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static, TabbedContent, TabPane

from attnscope.tui.ablation import Ablations
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.panes import ChecksPane, Details, DiffPane, MaskPane, StatusLine, TokensPane


class Workspace(Vertical):
    def __init__(self, prompt: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt  # the prompt field's first value, as one line
        self.hinted = bool(prompt)  # whether a `q` typed into the empty prompt was explained

    def on_input_changed(self, event: Input.Changed) -> None:
        """The first key a new user tries is `q`: typed into the empty prompt it is text, so say how to
        quit from there (once)."""
        if not self.hinted and event.value in ("q", "Q"):
            self.hinted = True
            self.notify("q went into the prompt: ctrl+c quits from anywhere (escape leaves the prompt)", timeout=8)

    def compose(self) -> ComposeResult:
        yield Input(
            value=self.prompt,
            id="prompt",
            placeholder="type a prompt, enter runs it (\\n: newline)",  # whole at 80 columns
            select_on_focus=False,  # tabbing in must not make typing replace the prompt
        )
        yield Static("", id="error")
        with TabbedContent(id="tabs", initial="heatmap"):
            with TabPane("Heatmap", id="heatmap"):
                yield HeatmapView(id="heatmap-view")
                yield Details(id="details")
            with TabPane("Mask", id="mask"):
                yield MaskPane(id="mask-view", classes="pane-scroll")
            with TabPane("Checks", id="checks"):
                yield ChecksPane(id="checks-list")
            with TabPane("Diff", id="diff"):
                yield DiffPane(id="diff-view", classes="pane-scroll")
            with TabPane("Tokens", id="tokens"):
                yield TokensPane(id="tokens-table", cursor_type="row", zebra_stripes=True)
        yield Ablations(id="ablations")
        yield StatusLine(id="status-row")
