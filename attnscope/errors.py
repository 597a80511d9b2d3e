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
