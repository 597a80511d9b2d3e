"""Prompts written on one line, as a prompts file and the TUI's prompt field hold them.

One rule for both: a literal ``\\n`` (backslash, n) in a line is a newline of the prompt. A prompts
file is UTF-8 text with one prompt per line: lines end at ``\\n`` only (a ``\\r`` before it is
dropped; a form feed or a Unicode line separator stays inside its prompt), and blank lines are
skipped. No torch: the CLI reads prompts before it loads anything.
"""

from __future__ import annotations

from collections.abc import Sequence

Prompt = str | Sequence[int]  # text, or token ids


def unescape(line: str) -> str:
    """The prompt a one-line text holds: each literal ``\\n`` a newline."""
    return line.replace("\\n", "\n")


def escape(prompt: str) -> str:
    """A prompt as one line: each newline a literal ``\\n`` (the inverse of `unescape`)."""
    return prompt.replace("\n", "\\n")


def prompt_lines(text: str) -> list[str]:
    """The prompts of a prompts file's text, one per non-blank line (see the module docstring)."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return [unescape(line) for line in lines if line.strip()]
