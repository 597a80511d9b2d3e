"""The key bindings screen (`?`)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# (keys, what they do); a key of "" starts a section named by the text
KEYS = [
    ("↑ ↓ in the navigator", "choose a layer / head"),
    ("[ ]", "previous / next head (from any pane)"),
    ("{ }", "the same head one layer up / down"),
    ("tab / shift+tab", "move focus: navigator → prompt → tabs → view"),
    ("1 … 5", "Heatmap, Mask, Checks, Diff, Tokens (focused)"),
    ("b", "hide / show the navigator (a wider map)"),
    ("", "Prompt"),
    ("enter", "run it (the cursor stays: typing is text)"),
    ("escape", "leave the prompt; \\n in it is a newline"),
    ("", "Heatmap"),
    ("← ↑ → ↓", "move the cell cursor (details below the map)"),
    ("+ / -", "zoom into exact cells / back to the overview"),
    ("l", "log color scale"),
    ("g", "GQA group: the query heads of this kv head"),
    ("", "Anywhere"),
    ("enter on a check", "jump to where it is worst"),
    ("enter on a token", "make it the query row"),
    ("n", "decode the next token (views grow by a row)"),
    ("ctrl+r", "run the prompt again"),
    ("a / A", "ablate the head (again: undo) / restore all"),
    ("s", "save an SVG screenshot (it says where)"),
    ("? · q / ctrl+c", "this help · quit (ctrl+c from the prompt too)"),
]
CLOSE = "escape / ? / q close · ↑ ↓ scroll"


def keys_text() -> Text:
    """The keys in two aligned columns: every description starts in the same column."""
    width = max(len(keys) for keys, _ in KEYS) + 2
    text = Text()
    for n, (keys, what) in enumerate(KEYS):
        if n:
            text.append("\n")
        if keys:
            text.append(f"  {keys:<{width}}", style="bold")
            text.append(what)
        else:
            text.append(what, style="underline")
    return text


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%;
                                  border: thick $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll() as keys:  # scrolls at 80×24: the border says how to close it
            keys.border_title, keys.border_subtitle = "attnscope tui — keys", CLOSE
            yield Static(keys_text())
