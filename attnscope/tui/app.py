"""The attnscope Textual app: navigator of layers and heads on the left; the prompt, tabs
(Heatmap, Mask, Checks, Diff, Tokens) and a progress line on the right.

The model runs in a thread worker: layers appear in the navigator as their records arrive and the
checks fill in as they finish. Editing the prompt cancels the running work (the worker's callbacks
stop it at the next layer or check) and starts a new run. `a` ablates the head shown and `A` restores
every head: see `attnscope.tui.ablation`.

A run that fails shows its error as one line in the app; quitting then exits with 2 (bad input: a
model path, a prompt) or 1 (anything else). An exception no handler caught closes the app with one
line on stderr and exit code 1, not a traceback.

Text typed for the prompt is never read as keys: enter runs the prompt and leaves the cursor in it,
tab or escape leaves it. The keys that write files or change the run (`s`, `n`, `ctrl+r`, `a`) only act
outside the prompt. The prompt is one line: a newline shows as ``\n`` there (as in a prompts file).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Header, Input, Static, TabbedContent
from textual.worker import get_current_worker

from attnscope.errors import UserError, one_line
from attnscope.inspector.report import pick_head
from attnscope.output import unused_path, write_outputs
from attnscope.prompts import escape, unescape
from attnscope.session import Session
from attnscope.tui import messages
from attnscope.tui.ablation import Ablations
from attnscope.tui.heatmap_view import FAILED, WAITING, HeatmapView
from attnscope.tui.help import HelpScreen
from attnscope.tui.navigator import Navigator
from attnscope.tui.panes import ChecksPane, Details, DiffPane, MaskPane, StatusLine, TokensPane
from attnscope.tui.runner import run_and_post
from attnscope.tui.workspace import Workspace

if TYPE_CHECKING:
    from attnscope.inspector.result import Result

TABS = ("heatmap", "mask", "checks", "diff", "tokens")


class AttnScopeApp(App):
    TITLE = "attnscope"
    SCREENS = {"help": HelpScreen}
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", show=False, priority=True),
        Binding("question_mark", "push_screen('help')", "keys"),
        Binding("s", "screenshot", "SVG"),
        Binding("n", "next_token", "next token"),
        Binding("ctrl+r", "rerun", "rerun"),
        Binding("a", "ablate", "ablate", show=False),
        Binding("A", "ablate(True)", "restore every head", show=False),
        Binding("right_square_bracket", "step(1, 0)", "next head"),
        Binding("left_square_bracket", "step(-1, 0)", "previous head", show=False),
        Binding("right_curly_bracket", "step(0, 1)", "next layer", show=False),
        Binding("left_curly_bracket", "step(0, -1)", "previous layer", show=False),
        Binding("b", "toggle_navigator", "navigator", show=False),
        Binding("escape", "leave_prompt", "leave the prompt", show=False),
        *(Binding(str(i + 1), f"tab('{name}')", name, show=False) for i, name in enumerate(TABS)),
    ]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]  # short terminals: a one-line prompt (app.tcss)
    # what each tab focuses
    PANES = dict(
        heatmap="#heatmap-view", mask="#mask-view", checks="#checks-list", diff="#diff-view", tokens="#tokens-table"
    )

    def __init__(self, model: str = "tiny-code", prompt: str | list[int] | None = None, **options: Any) -> None:
        """`options`: max_new_tokens (8), compare (model B of the Diff tab), and how the session loads
        and runs the models: backend, dtype, device, engine, allow_pickle (`attnscope.session.Session`)."""
        super().__init__()
        max_new_tokens = options.pop("max_new_tokens", 8)
        self.session = Session(model, compare_with=options.pop("compare", None), **options)
        self.initial_prompt, self.max_new_tokens = prompt, max_new_tokens
        self.result: Result | None = None  # the finished run shown, or None while one runs
        self.run_id = self.checks_done = 0
        self.failure = 0  # the exit code the last run leaves: 0, 2 (bad input) or 1 (an error)

    # ---- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Navigator(id="nav")
            text = self.initial_prompt if isinstance(self.initial_prompt, str) else ""
            yield Workspace(escape(text), id="main")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.session.describe()
        self.watch(self.query_one(Navigator), "selected", self.head_selected, init=False)
        if self.initial_prompt:
            self.start_run(self.initial_prompt)
        else:
            self.query_one("#prompt", Input).focus()
            self.query_one(StatusLine).idle()  # nothing runs until a prompt is entered: no bar

    def on_unmount(self) -> None:
        gc.unfreeze()  # the interpreter's shutdown collects the last run as usual

    # ---- running -----------------------------------------------------------------------------
    def start_run(self, prompt) -> None:
        """Cancel whatever runs and analyze `prompt` (text or token ids)."""
        gc.unfreeze()  # what the last run left is collectable again (see on_run_finished)
        self.run_id += 1
        self.result, self.checks_done = None, 0
        self.query_one("#error", Static).remove_class("shown")
        self.query_one(HeatmapView).no_result(WAITING)
        self.query_one(Navigator).reset(self.session.model_name)
        self.query_one(ChecksPane).clear()
        self.query_one(StatusLine).start(loading=self.session.loaded is None)
        self.query_one(Ablations).reset()
        self.run_model(prompt, self.run_id)

    @work(thread=True, exclusive=True, group="run")
    def run_model(self, prompt, run_id: int) -> None:
        worker = get_current_worker()
        run_and_post(self.session, prompt, run_id, self.max_new_tokens, self.post_message, lambda: worker.is_cancelled)

    def on_layer_arrived(self, message: messages.LayerArrived) -> None:
        if message.run_id == self.run_id:
            model = self.session.load()
            layout, mask = model.layout, model.layer_masks()[message.layer]
            self.query_one(Navigator).add_layer(message.layer, layout.n_heads, layout.n_kv_heads, repr(mask))
            self.query_one(StatusLine).captured(message.layer, message.n_layers, 5)

    def on_check_finished(self, message: messages.CheckFinished) -> None:
        if message.run_id == self.run_id:
            self.checks_done += 1
            self.query_one(StatusLine).check(message.check, self.checks_done, 5)
            self.query_one(ChecksPane).add_check(message.check)

    def on_stage_started(self, message: messages.StageStarted) -> None:
        if message.run_id == self.run_id:
            self.query_one(StatusLine).stage(message.stage)

    def on_result_ready(self, message: messages.ResultReady) -> None:
        """The map, the navigator's heads, the Mask and Tokens tabs now; the checks' findings later."""
        if message.run_id != self.run_id:
            return
        result = self.result = message.result
        self.sub_title = self.session.describe(result.backend)
        for pane in (self.query_one(MaskPane), self.query_one(TokensPane)):
            pane.result = result
        view = self.query_one(HeatmapView)  # the first map: the most focused head, as `attnscope run` draws
        layer, head = pick_head(result.report())[:2] if view.result is None else (view.layer_idx, view.head_idx)
        self.show_head(min(layer, result.n_layers - 1), min(head, result.n_heads - 1))

    def on_run_finished(self, message: messages.RunFinished) -> None:
        if message.run_id != self.run_id:
            return
        result = self.result = message.result
        view = self.query_one(HeatmapView)
        self.query_one(Navigator).update_report(result.report())
        self.query_one(DiffPane).comparison = message.comparison
        self.query_one(DiffPane).result = result
        if (failure := result.first_failure()) is not None:
            self.show_head(*failure)
        view.prewarm_in_background(result)  # every head's overview, so that switching heads only draws
        # Everything alive now (model, capture, tokenizer, app) lives until the next run: keep the collector's
        # full passes off those ~400k objects, or browsing pauses ~250 ms every twenty-odd head switches.
        gc.freeze()
        refused = message.comparison if isinstance(message.comparison, str) else None
        self.failure = 2 if refused else 0  # a comparison B refuses on this prompt is bad input too
        self.query_one(StatusLine).finished(result, refused)
        self.query_one(Ablations).finished(result, message.comparison)  # the baseline of the ablated heads

    def on_run_failed(self, message: messages.RunFailed) -> None:
        if message.run_id == self.run_id:
            self.failure = message.exit_code
            (error := self.query_one("#error", Static)).update(f"error: {message.error}")
            error.add_class("shown")
            self.query_one(StatusLine).failed()
            self.query_one(HeatmapView).no_result(FAILED)

    def show_run(self, result: Result, comparison=None) -> None:
        """Show `result` (its Diff tab against `comparison`) in the views: the baseline, or with heads ablated."""
        self.result = result
        for pane in (self.query_one(MaskPane), self.query_one(TokensPane)):
            pane.result = result
        self.query_one(DiffPane).comparison = comparison
        self.query_one(DiffPane).result = result
        view = self.query_one(HeatmapView)
        self.show_head(view.layer_idx, view.head_idx)
        view.prewarm_in_background(result)

    # ---- selection ---------------------------------------------------------------------------
    def show_head(self, layer: int, head: int, position: int | None = None) -> None:
        """Show a head everywhere (heatmap, navigator, Mask and Diff tabs), the cursor on `position`."""
        view = self.query_one(HeatmapView)
        view.show(self.result, layer, head)
        self.query_one(Navigator).select_head(layer, head)
        if position is not None:
            view.focus_position(position)

    def head_selected(self, selected: tuple[int, int] | None) -> None:
        """The navigator's cursor is on another head: show it (called while the key is handled)."""
        if self.result is None or selected is None:
            return
        view = self.query_one(HeatmapView)
        if (view.layer_idx, view.head_idx) != selected or view.result is not self.result:
            view.show(self.result, *selected)
        for pane in (self.query_one(MaskPane), self.query_one(DiffPane)):
            pane.selection = selected

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Run the prompt; the cursor stays in it, so what is typed next is still text, never keys."""
        if not event.value.strip():
            return self.notify("the prompt is empty", severity="warning")
        self.start_run(unescape(event.value))

    def on_cursor_moved(self, message: messages.CursorMoved) -> None:
        self.query_one(Details).info = message.info

    def on_jump_to(self, message: messages.JumpTo) -> None:
        """A check's worst place or a prompt token chosen in a pane: show it in the Heatmap tab."""
        if self.result is None:
            return
        self.action_tab("heatmap")
        view = self.query_one(HeatmapView)
        if message.layer is not None:
            self.show_head(message.layer, view.head_idx if message.head is None else message.head, message.position)
        elif message.position is not None:
            view.focus_position(message.position)

    # ---- actions -----------------------------------------------------------------------------
    async def action_quit(self) -> None:
        """Quit (q, ctrl+c) with the exit code of the last run: 0, or what its failure was."""
        self.exit(return_code=self.failure)

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook for an exception no handler caught: the app closes as it does (exit code 1,
        the error kept for tests run with Pilot), with one line on stderr instead of a traceback."""
        super()._handle_exception(error)
        self._exit_renderables[:] = [
            Text(f"attnscope: error: {one_line(getattr(error, 'error', error))}", no_wrap=True, overflow="ignore")
        ]

    def action_tab(self, name: str) -> None:
        """Open a tab and focus its pane, so that the arrows move in what is shown."""
        self.query_one(TabbedContent).active = name
        self.query_one(self.PANES[name]).focus()

    def action_leave_prompt(self) -> None:
        if self.focused is self.query_one("#prompt", Input):
            self.query_one(self.PANES[self.query_one(TabbedContent).active]).focus()

    def action_toggle_navigator(self) -> None:
        """Hide or show the navigator (at 80 columns the map gets its width)."""
        left = self.query_one("#left")
        left.display = not left.display
        if not left.display and self.focused is self.query_one(Navigator):
            self.query_one(HeatmapView).focus()

    def action_step(self, heads: int, layers: int) -> None:
        """The head `heads` on (into the next layer), or the same head `layers` on, from any pane."""
        if self.result is not None:
            view = self.query_one(HeatmapView)
            self.query_one(Navigator).step(
                (view.layer_idx, view.head_idx), self.result.n_layers, self.result.n_heads, heads=heads, layers=layers
            )

    def action_screenshot(self) -> None:
        """Save what is on the screen as SVG in the current directory, and say where."""
        path = unused_path(Path.cwd(), time.strftime("attnscope_%Y-%m-%dT%H-%M-%S"), ".svg")  # two in 1 s: -2
        try:
            write_outputs([("screenshot", path, self.export_screenshot())])
        except UserError as exc:
            return self.notify(f"screenshot not saved: {exc}", severity="error", timeout=8)
        self.notify(f"screenshot saved: {path}", timeout=8)

    def action_rerun(self) -> None:
        if (prompt := self.query_one("#prompt", Input).value).strip():
            self.start_run(unescape(prompt))

    def action_ablate(self, every: bool = False) -> None:
        """Ablate the head shown or restore it (`every`: restore every head); the prompt runs again."""
        view = self.query_one(HeatmapView)
        self.query_one(Ablations).toggle(view.layer_idx, None if every else view.head_idx)

    def action_next_token(self) -> None:
        """Append the greedy next token to the analyzed sequence and run again."""
        if self.result is None:
            self.notify("wait for the run to finish", timeout=2)
        elif len(self.result.ids) + 1 > self.session.load().layout.max_positions:
            self.notify("the model has no more positions", severity="warning")
        else:
            self.start_run([*self.result.ids, int(self.result.logits[-1].argmax())])
