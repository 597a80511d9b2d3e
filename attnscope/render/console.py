"""Consoles of the command line: stdout with --color, stderr for progress, and SVG/HTML export.

Progress (a spinner while a model loads, a bar over the runs of `attnscope check`) goes to stderr,
and only when stderr is a terminal: nothing is written when it is piped.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from rich.console import Console

from attnscope.errors import UserError
from attnscope.output import write_atomic


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def output_console(color: str) -> Console:
    """The stdout console for --color auto|always|never (auto: rich's detection, NO_COLOR honoured)."""
    if color not in ("auto", "always", "never"):
        raise UserError(f"--color must be auto, always or never, got {color!r}")
    if color == "always":
        return Console(highlight=False, force_terminal=True, color_system="truecolor")
    if color == "never":
        return Console(highlight=False, no_color=True, color_system=None)
    return Console(highlight=False)


def emit(out: Console, renderables, svg: Path | None = None, html: Path | None = None, title: str = "attnscope"):
    """Print the renderables; with --svg/--html also render them, in color at the same width, to files."""
    for r in renderables:
        out.print(r)
    if svg is None and html is None:
        return
    recorder = Console(record=True, width=out.width, file=io.StringIO(), force_terminal=True,
                       color_system="truecolor", highlight=False)
    for r in renderables:
        recorder.print(r)
    if svg is not None:
        write_atomic(svg, recorder.export_svg(title=title, clear=False))
    if html is not None:
        write_atomic(html, recorder.export_html(clear=False))


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
