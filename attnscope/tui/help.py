"""The key bindings screen (`?`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = """\
[b]attnscope tui[/b] — keys

  [b]↑ ↓[/b] in the navigator   choose a layer / head
  [b][ ][/b]                   previous / next head (from any pane)
  [b]{ }[/b]                   the same head one layer up / down
  [b]tab / shift+tab[/b]       move focus: navigator → prompt → tabs → view
  [b]1 … 5[/b]                 Heatmap, Mask, Checks, Diff, Tokens tab

  Heatmap
  [b]← ↑ → ↓[/b]               move the cell cursor (details below the map)
  [b]+ / -[/b]                 zoom into exact cells around the cursor / back to the overview
  [b]l[/b]                     log color scale
  [b]g[/b]                     GQA group: the query heads that share this kv head

  [b]enter[/b] on a check       jump to the layer / head / position where it is worst
  [b]enter[/b] on a token       make it the query row
  [b]n[/b]                     decode the next token (every view grows by one row)
  [b]ctrl+r[/b]                run the prompt again
  [b]s[/b]                     save an SVG screenshot of the current view
  [b]?[/b]                     this help        [b]q[/b]  quit
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 72; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(KEYS)
