"""Ablation in the app: `a` zeroes the attention output of the head shown (again: restores it), `A`
restores every head, and the prompt runs again with the ablated heads, beside the run without them.

`Ablations` is the line over the status line while heads are ablated: which (the session's
`interventions`, those of ``tui --intervene`` too), and what they changed (the
`attnscope.inspector.interventions.Effect`: the logits' largest change, the greedy next tokens kept,
the next-token KL, the first layer whose attention output changed, the continuation), or that the run
with them is on its way. It owns that run (`attnscope.session.Session.intervene`, in a thread worker
as the app's run is), started once the app's run has finished; that run, with its checks, is kept as
the baseline, so that restoring every head shows it again as it was, with no run. With heads
ablated, the views show the run with them: the heatmap, the Tokens tab's continuation, and the Diff
tab, which compares it with the run without them (as ``--compare`` compares two models); the
navigator marks the ablated heads ⊘ and keeps the baseline's glyphs and the Checks tab its checks:
checks test the model as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from attnscope.inspector.interventions import acted_on, toggle_head
from attnscope.tui import messages
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import MARK, Navigator
from attnscope.tui.panes import DiffPane, TokensPane
from attnscope.tui.runner import intervene_and_post

if TYPE_CHECKING:
    from attnscope.inspector.interventions import Effect
    from attnscope.inspector.result import Result

GROUP = "interventions"  # the workers' group


def effect_line(effect: Effect, n_tokens: int) -> list[str]:
    """The parts of the short account of an effect on a prompt of `n_tokens` (the Diff tab has the
    whole summary); positions as the Tokens tab numbers them."""
    first = next((i for i, d in enumerate(effect.layer_output_max_abs_diff) if d > 0), None)
    kept = f"greedy kept {effect.top1_agreement:.0%}"
    if effect.changed_positions:
        kept += f" (not at pos {', '.join(map(str, effect.changed_positions))})"
    parts = [
        f"logits max |Δ| {effect.logits_max_abs_diff:.3g}",
        kept,
        f"KL max {max(effect.kl_per_position, default=0.0):.3g}",
        "attention unchanged" if first is None else f"attention changes from L{first}",
    ]
    if effect.continuation[0]:
        change = effect.continuation_change
        parts.append("continuation same" if change is None else f"continuation changes at pos {n_tokens + change}")
    return parts


class Ablations(Static):
    """The ablated heads and their effect (see the module docstring); hidden while none is ablated."""

    DEFAULT_CSS = """
    Ablations { height: auto; max-height: 3; display: none; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.baseline: tuple[Result, Any] | None = None  # the app's finished run and its --compare comparison
        self.failure = 0  # the exit code the baseline left
        self.run_id = 0
        self.effect: Effect | None = None  # of the run shown, when it has interventions

    @property
    def host(self) -> Any:
        """The app, `attnscope.tui.app.AttnScopeApp` (its session, the run shown, its exit code)."""
        return self.app

    def say(self, *parts: str, style: str = "") -> None:
        names = " ".join(map(str, self.host.session.interventions))
        self.update(Text.assemble(MARK[1:], f" {names} · ", (" · ".join(parts), style)))

    def reset(self) -> None:
        """A new run started: the baseline is gone, and a run with the interventions stops."""
        self.run_id += 1
        self.baseline = self.effect = None
        self.workers.cancel_group(self, GROUP)
        if self.host.session.interventions:
            self.say("waiting for the run …", style="dim")

    def finished(self, result: Result, comparison: Any) -> None:
        """The app's run finished: it is the baseline; run the interventions on it, if any."""
        self.baseline, self.failure = (result, comparison), self.host.failure
        if self.host.session.interventions:
            self.start()

    def toggle(self, layer: int, head: int | None) -> None:
        """Ablate `head` of `layer` or restore it (None: restore every head), and show the outcome."""
        session, result = self.host.session, self.host.result
        if result is None and self.baseline is None:
            return self.notify("wait for the map", timeout=2)
        if head is None:
            if not session.interventions:
                return self.notify("no head is ablated", timeout=2)
            session.interventions = []
        else:
            layout = session.load().layout
            session.interventions = toggle_head(session.interventions, layer, head, layout.n_heads, layout.n_kv_heads)
        self.start()

    def start(self) -> None:
        """Mark the heads and run the interventions on the baseline (once it has finished); with none,
        show the baseline again."""
        app, session = self.host, self.host.session
        self.run_id += 1
        self.effect = None
        self.workers.cancel_group(self, GROUP)
        if session.loaded is not None:  # a run has drawn: the model is there
            layout = session.loaded.layout
            app.query_one(Navigator).mark(acted_on(session.interventions, layout.n_heads, layout.n_kv_heads))
        backend = None if self.baseline is None else self.baseline[0].backend
        app.sub_title = session.describe(backend)
        self.display = bool(session.interventions)
        if self.baseline is None:
            return self.say("after the run …", style="dim")
        app.failure = self.failure
        if not session.interventions:
            return self.show(*self.baseline)
        self.say("running with them …", style="dim")
        self.run_interventions(self.baseline[0].ids, self.run_id)

    def show(self, result: Result, comparison: Any, versus: str | None = None, effect: Effect | None = None) -> None:
        """Show `result` in the views, its Diff tab against `comparison` (run A named `versus`), with
        the `effect` of the interventions when it has them (the Tokens tab: the continuation without)."""
        diff = self.host.query_one(DiffPane)
        diff.versus, diff.note = versus, "" if effect is None else effect.summary()
        layout = result.run.model.layout
        acted = set() if effect is None else acted_on(effect.interventions, layout.n_heads, layout.n_kv_heads)
        self.host.query_one(HeatmapView).acted_on = acted
        self.host.query_one(TokensPane).baseline = None if effect is None else effect.continuation[0]
        self.host.show_run(result, comparison)

    @work(thread=True, exclusive=True, group=GROUP)
    def run_interventions(self, ids: list[int], run_id: int) -> None:
        worker = get_current_worker()
        session, n = self.host.session, self.host.max_new_tokens
        intervene_and_post(session, ids, run_id, n, self.post_message, lambda: worker.is_cancelled)

    def on_interventions_ran(self, message: messages.InterventionsRan) -> None:
        if message.run_id != self.run_id:
            return
        intervened = message.intervened
        self.effect = intervened.effect
        self.say(*effect_line(intervened.effect, len(intervened.result.ids)))
        names = " ".join(map(str, self.host.session.interventions))
        self.show(intervened.result, intervened.comparison, f"the run without {names}", intervened.effect)

    def on_interventions_failed(self, message: messages.InterventionsFailed) -> None:
        if message.run_id == self.run_id:
            self.host.failure = message.exit_code
            self.say(f"not run: {message.error}", style="red")
