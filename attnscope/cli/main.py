"""The entry point: the commands registered, signals and closed pipes handled."""

from __future__ import annotations

import os
import sys

import typer

import attnscope.cli.compare  # noqa: F401  (registers compare, after run and check)
import attnscope.cli.inspect  # noqa: F401  (registers run, check)
import attnscope.cli.tools  # noqa: F401  (registers mask, tui, heads, models)
from attnscope.cli.app import app
from attnscope.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_USAGE,
)


class PipeClosed(BaseException):
    """stdout or stderr is a pipe whose reader has gone (`attnscope run ... | head -3`)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream


class PipeGuard:
    """A standard stream whose write or flush, once its reader has gone, raises `PipeClosed` (not an
    Exception, so no handler on the way mistakes it for an error) instead of BrokenPipeError."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise PipeClosed(self.stream) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise PipeClosed(self.stream) from None

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2; Ctrl-C is
    `attnscope: interrupted` and 130; a closed pipe ends the command quietly with 141."""
    sys.stdout, sys.stderr = PipeGuard(sys.stdout), PipeGuard(sys.stderr)
    try:
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
    except PipeClosed as closed:
        # what is still buffered for the closed pipe goes nowhere, so the interpreter's last flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), closed.stream.fileno())
        sys.exit(EXIT_PIPE_CLOSED)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        # click's UsageError family (typer may vendor its own click, so match by interface)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"attnscope {ctx.info_name}" if ctx is not None and ctx.parent is not None else "attnscope"
        typer.echo(f"attnscope: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(EXIT_USAGE if exc.exit_code == EXIT_USAGE else exc.exit_code or EXIT_FAILED)
    if code == EXIT_INTERRUPTED:
        typer.echo("attnscope: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
