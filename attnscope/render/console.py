"""Consoles of the command line: stdout with --color, stderr for progress, and SVG/HTML export.

Progress goes to stderr, only when stderr is a terminal (nothing is written when it is piped, or
with --quiet), as transient bars that vanish when the work is done: loading the model, the forward,
the row statistics, each check where it loops, the head roles (`stage_bars`).

A stream whose encoding cannot write the glyphs (``PYTHONIOENCODING=ascii``, a C locale) gets
ASCII: each glyph becomes one ASCII look-alike (so columns stay aligned), any other character it
cannot encode a ``?``, and rich draws its boxes in ASCII.
"""

from __future__ import annotations

import contextlib
import io
import os
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


PAGE_WIDTH = 120  # columns of --svg / --html when nothing says the width: about a page's
MIN_WIDTH = 40


def output_console(color: str, width: int | None = None, exporting: bool = False) -> Console:
    """The stdout console for --color auto|always|never (auto: rich's detection, NO_COLOR honoured),
    `width` columns wide (--width); without it, the terminal's width, COLUMNS when stdout is not a
    terminal, else (rich's 80) `PAGE_WIDTH` when `exporting` to --svg / --html."""
    if color not in ("auto", "always", "never"):
        raise UserError(f"--color must be auto, always or never, got {color!r}")
    if width is not None and width < MIN_WIDTH:
        raise UserError(f"--width must be at least {MIN_WIDTH} columns, got {width}")
    if color == "always":
        out = Console(highlight=False, force_terminal=True, color_system="truecolor", file=_stream(False))
    elif color == "never":
        out = Console(highlight=False, no_color=True, color_system=None, file=_stream(False))
    else:
        out = Console(highlight=False, file=_stream(False))
    if width is None and exporting and not _isatty(sys.stdout) and not os.environ.get("COLUMNS", "").isdigit():
        width = PAGE_WIDTH
    if width is not None:
        out.width = width
    return out


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def emit(out: Console, renderables) -> None:
    """Print the renderables."""
    for r in renderables:
        out.print(r)


def exports(
    out: Console, renderables, svg: Path | None = None, html: Path | None = None, title: str = "attnscope"
) -> list[tuple[str, Path | None, str]]:
    """The --svg / --html-terminal outputs of the renderables, in color at the console's width, as
    (flag, path, text) for `attnscope.output.write_outputs`."""
    if svg is None and html is None:
        return []
    recorder = Console(
        record=True, width=out.width, file=io.StringIO(), force_terminal=True, color_system="truecolor", highlight=False
    )
    for r in renderables:
        recorder.print(r)
    return [
        ("--svg", svg, recorder.export_svg(title=title, clear=False) if svg is not None else ""),
        ("--html-terminal", html, recorder.export_html(clear=False) if html is not None else ""),
    ]


# what each stage's bar counts (the core names the stages: `attnscope.inspector.run.Progress`)
STAGE_LABELS = {
    "loading": "loading",
    "forward": "forward · layers",
    "decode": "decoding · tokens",
    "statistics": "row statistics · layers",
    "nan": "nan · layers",
    "full_vs_incremental": "full_vs_incremental · tokens × layers",
    "backend_vs_reference": "backend_vs_reference · layers",
    "causality": "causality · perturbations",
    "roles": "head roles · layers",
}


class StageBars:
    """One transient bar per stage of the work, on stderr: called as ``bars(done, total, stage)``
    (the core's progress callback); `describe` relabels a stage, `clear` removes the bars of the
    stages that are done (between the runs of `attnscope check`)."""

    def __init__(self, progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, done: int, total: int | None, stage: str) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(STAGE_LABELS.get(stage, stage), total=total)
        self.progress.update(task, completed=done, total=total)

    def describe(self, stage: str, text: str) -> None:
        if stage not in self.tasks:
            self(0, None, stage)
        self.progress.update(self.tasks[stage], description=text)

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        for stage in [s for s in self.tasks if s not in keep]:
            self.progress.remove_task(self.tasks.pop(stage))


@contextlib.contextmanager
def stage_bars(quiet: bool = False):
    """`StageBars` on stderr while the body runs, when stderr is a terminal and not `quiet`; else
    yields None (nothing is written when stderr is piped)."""
    err = console(stderr=True)
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        yield StageBars(progress)
