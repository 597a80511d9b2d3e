"""Prompts written on one line, as a prompts file and the TUI's prompt field hold them.

One rule for both: a literal ``\\n`` (backslash, n) in a line is a newline of the prompt. A prompts
file is UTF-8 text with one prompt per line: lines end at ``\\n`` only (a ``\\r`` before it is
dropped; a form feed or a Unicode line separator stays inside its prompt), and blank lines are
skipped. No torch: the CLI reads prompts before it loads anything.

Sizes are bounded before they are held: a prompt is at most `MAX_PROMPT_BYTES` of UTF-8 (whether
given on the command line, in a prompts file, in the TUI or to `Scope.run`), and a prompts file (or
stdin) is read in chunks of `READ_CHUNK` bytes, at most `MAX_PROMPTS_BYTES` of it, a line longer than
a prompt refused as soon as it is seen: ``--prompts /dev/zero`` or ``yes | attnscope check --prompts -``
end with one line, in bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from attnscope.errors import UserError

Prompt = str | Sequence[int]  # text, or token ids

MAX_PROMPT_BYTES = 1 << 20  # 1 MiB of UTF-8 text per prompt (~250k tokens)
MAX_PROMPTS_BYTES = 16 << 20  # 16 MiB per prompts file or stdin
READ_CHUNK = 1 << 20  # no larger than a prompt: a line inside one chunk is short enough


def validate_prompt_size(prompt: str) -> None:
    """A `UserError` when `prompt` is longer than `MAX_PROMPT_BYTES` of UTF-8 (checked before the
    tokenizer sees it)."""
    if len(prompt) > MAX_PROMPT_BYTES // 4 and len(prompt.encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise UserError(f"the prompt is longer than {MAX_PROMPT_BYTES >> 20} MiB of UTF-8 text (the limit of a prompt)")


def read_prompt_bytes(stream: BinaryIO, name: str) -> bytes:
    """The bytes of a prompts file or stream, read `READ_CHUNK` at a time; a `UserError` (naming the
    file as `name`) as soon as a line is longer than a prompt may be or the whole is longer than
    `MAX_PROMPTS_BYTES`."""
    chunks: list[bytes] = []
    size = line = lines = 0  # bytes read, bytes of the line being read, lines ended
    while chunk := stream.read(READ_CHUNK):
        size += len(chunk)
        if size > MAX_PROMPTS_BYTES:
            raise UserError(f"{name}: longer than {MAX_PROMPTS_BYTES >> 20} MiB (the limit of a prompts file)")
        first = chunk.find(b"\n")  # a line inside one chunk is shorter than a chunk, so than a prompt
        if first >= 0 and line + first <= MAX_PROMPT_BYTES:
            lines += chunk.count(b"\n")
            line = len(chunk) - chunk.rfind(b"\n") - 1
        else:
            line += len(chunk) if first < 0 else first
        if line > MAX_PROMPT_BYTES:
            raise UserError(
                f"{name}: line {lines + 1} is longer than {MAX_PROMPT_BYTES >> 20} MiB (the limit of a prompt)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
