"""Errors a user can cause. The CLI turns every `UserError` into one line on stderr and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user: a path, a file, a flag, a prompt. The message is shown as is, on one
    line: line breaks in it (from a library's message it quotes) become spaces."""

    def __init__(self, message: str = ""):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))


class ConfigError(UserError):
    """A model config that attnscope cannot run (unsupported model type or option, bad sizes)."""


class LoadError(UserError):
    """Model files that are missing, malformed, refused or do not fit the config."""


class BackendUnavailable(UserError):
    """An attention backend that cannot run on this machine."""


class UnsupportedFeature(UserError):
    """A model feature (logit soft-capping, attention sinks, ...) that the chosen backend does not implement."""


class ArgumentError(UserError, ValueError):
    """A bad value of an argument of the core, named as the core names it (``window``, ``layer``):
    "window must be >= 1, got 0". A front end that takes the argument under another name says so
    with `message_for`: the command line writes "--window must be >= 1, got 0"."""

    def __init__(self, argument: str, detail: str):
        self.argument, self.detail = argument, detail
        super().__init__(f"{argument} {detail}")

    def message_for(self, names: dict[str, str]) -> str:
        """The message with the argument under its front end's name (`names`: core name -> that name;
        an argument not in it keeps its own)."""
        return f"{names.get(self.argument, self.argument)} {self.detail}"


def one_line(error: BaseException) -> str:
    """An unexpected exception (a bug, not bad input) as one line: its type and message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
