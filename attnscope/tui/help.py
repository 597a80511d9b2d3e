"""The key bindings screen (`?`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = """\
[b]attnscope tui[/b] — keys

  [b]↑ ↓[/b] in the navigator   choose a layer / head
  [b][ ][/b]                   previous / next head (from any pane)
  [b]{ }[/b]                   the same head one layer up / down
  [b]tab / shift+tab[/b]       move focus: navigator → prompt → tabs → view
  [b]1 … 5[/b]                 Heatmap, Mask, Checks, Diff, Tokens (focused)
  [b]b[/b]                     hide / show the navigator (a wider map)

  Prompt
  [b]enter[/b]                 run it (the cursor stays: typing is text)
  [b]escape[/b]                leave the prompt; [b]\\n[/b] in it is a newline

  Heatmap
  [b]← ↑ → ↓[/b]               move the cell cursor (details below the map)
  [b]+ / -[/b]                 zoom into exact cells / back to the overview
  [b]l[/b]                     log color scale
  [b]g[/b]                     GQA group: the query heads of this kv head

  [b]enter[/b] on a check       jump to where it is worst
  [b]enter[/b] on a token       make it the query row
  [b]n[/b]                     decode the next token (views grow by a row)
  [b]ctrl+r[/b]                run the prompt again
  [b]s[/b]                     save an SVG screenshot (it says where)
  [b]?[/b]                     this help        [b]q[/b]  quit
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 78; max-width: 100%; height: auto; max-height: 100%;
                                  border: thick $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():  # scrolls at 80×24
            yield Static(KEYS)
