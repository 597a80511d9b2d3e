"""Consoles of the command line: stdout with --color, stderr for progress, and SVG/HTML export.

Progress (a spinner while a model loads, a bar over the runs of `attnscope check`) goes to stderr,
and only when stderr is a terminal: nothing is written when it is piped.

A stream whose encoding cannot write the glyphs (``PYTHONIOENCODING=ascii``, a C locale) gets
ASCII: each glyph becomes one ASCII look-alike (so columns stay aligned), any other character it
cannot encode a ``?``, and rich draws its boxes in ASCII.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from rich.console import Console

from attnscope.errors import UserError

GLYPHS, ASCII_GLYPHS = "·×Δ−█✗…⁺–▒▀⏎→✓▓░␣⇥—Σ◆▇│␍²±━─", ".xd-#X~+-+^$>+*:_>-S*#|<2~--"
_TO_ASCII = str.maketrans(GLYPHS, ASCII_GLYPHS)


class AsciiStream:
    """A text stream that cannot encode the glyphs: writes their ASCII look-alikes instead, and
    ``?`` for any other character it cannot encode."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        encoding = self.stream.encoding or "ascii"
        return self.stream.write(text.translate(_TO_ASCII).encode(encoding, "replace").decode(encoding))

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _stream(stderr: bool):
    """stdout (or stderr), wrapped in an `AsciiStream` when its encoding cannot write the glyphs;
    None (rich's default, the stream at each write) when it can."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        GLYPHS.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return AsciiStream(stream)
    return None


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, file=_stream(stderr))


def output_console(color: str) -> Console:
    """The stdout console for --color auto|always|never (auto: rich's detection, NO_COLOR honoured)."""
    if color not in ("auto", "always", "never"):
        raise UserError(f"--color must be auto, always or never, got {color!r}")
    if color == "always":
        return Console(highlight=False, force_terminal=True, color_system="truecolor", file=_stream(False))
    if color == "never":
        return Console(highlight=False, no_color=True, color_system=None, file=_stream(False))
    return Console(highlight=False, file=_stream(False))


def emit(out: Console, renderables) -> None:
    """Print the renderables."""
    for r in renderables:
        out.print(r)


def exports(out: Console, renderables, svg: Path | None = None, html: Path | None = None,
            title: str = "attnscope") -> list[tuple[str, Path | None, str]]:
    """The --svg / --html outputs of the renderables, in color at the console's width, as
    (flag, path, text) for `attnscope.output.write_outputs`."""
    if svg is None and html is None:
        return []
    recorder = Console(record=True, width=out.width, file=io.StringIO(), force_terminal=True,
                       color_system="truecolor", highlight=False)
    for r in renderables:
        recorder.print(r)
    return [("--svg", svg, recorder.export_svg(title=title, clear=False) if svg is not None else ""),
            ("--html", html, recorder.export_html(clear=False) if html is not None else "")]


def load_with_spinner(load, name: str):
    """`load(progress)` with a spinner on stderr when it is a terminal (progress(done, total, what))."""
    err = console(stderr=True)
    if not err.is_terminal:
        return load(None)
    with err.status(f"loading {name} …") as status:
        return load(lambda done, total, what: status.update(f"loading {name}: {what} ({done}/{total} files)"))


@contextlib.contextmanager
def progress_bar(total: int):
    """A progress bar on stderr when it is a terminal; yields advance(description)."""
    err = console(stderr=True)
    if not err.is_terminal or total <= 1:
        yield lambda description: None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("checking", total=total)
        started = [False]

        def advance(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=description)

        yield advance
