"""How `full_vs_incremental` takes a prompt through the KV cache: its incremental modes.

Inference engines do not decode a prompt a token at a time: they prefill it in chunks (vLLM and
SGLang chunked prefill, llama.cpp's ``n_batch``/``n_ubatch``), then decode one token per step. Those
are the two paths where KV-cache bugs live: a chunk that attends to a cache (bottom-right causal
alignment, the chunk's RoPE offsets, the cache write of several tokens at once), and a one-token
step. A mode says which positions go through which path (`Plan`):

- ``default``: the prompt's last `TAIL` tokens decoded one at a time; the positions before them
  prefilled in chunks of sizes that do not divide each other, so chunk boundaries fall at varied
  places: `FIRST_CHUNKS` (7, then 64: the first chunk that meets a cache), then the rest in at most
  `MAX_REST_CHUNKS` chunks of an odd size that 7 does not divide. At most 8 + 32 forward calls
  whatever the prompt's length;
- ``tokens``: every position one at a time (the exhaustive mode: T forward calls);
- ``chunks:C`` or ``chunks:C1,C2,...``: the whole prompt in chunks of the sizes given, in turn
  (16, 64, 16, 64, ... for ``chunks:16,64``); ``chunks:1`` is ``tokens``.

Every position of the prompt is computed incrementally by exactly one path, and each is compared
with the parallel forward. This module imports no torch (the command line parses a mode before any
work).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from attnscope.errors import UserError

DEFAULT = "default"
TAIL = 32  # the default's last positions, decoded one token at a time
FIRST_CHUNKS = (7, 64)  # the default's first prefill chunks: 7 sees no cache, 64 is the first to meet one
MAX_REST_CHUNKS = 6  # the default's chunks after those, whatever the prompt's length
MODES = "default, tokens, chunks:C[,C...]"


@dataclass(frozen=True)
class Mode:
    """An incremental mode: ``default``, ``tokens`` or ``chunks`` (with its `sizes`)."""

    name: str
    sizes: tuple[int, ...] = ()  # chunks: the chunk sizes, used in turn

    @property
    def spec(self) -> str:
        """The mode as the command line writes it."""
        return f"chunks:{','.join(map(str, self.sizes))}" if self.name == "chunks" else self.name

    def plan(self, length: int) -> Plan:
        """Which positions of a prompt of `length` tokens go through which path."""
        if self.name == "tokens":
            return Plan(self.spec, (), length)
        if self.name == "chunks":
            return Plan(self.spec, _cut(length, itertools.cycle(self.sizes)), 0)
        tail = min(TAIL, length)
        return Plan(self.spec, default_chunks(length - tail), tail)


def default_chunks(length: int) -> tuple[int, ...]:
    """The default's prefill chunks of `length` positions: `FIRST_CHUNKS`, then the rest in at most
    `MAX_REST_CHUNKS` chunks of one odd size that 7 does not divide (the last one shorter)."""
    rest = length - sum(FIRST_CHUNKS)
    size = max(1, math.ceil(rest / MAX_REST_CHUNKS)) if rest > 0 else 1
    size += 1 - size % 2  # odd: no power of two divides it, so boundaries move against 64-wide tiles
    if size % 7 == 0:
        size += 2
    return _cut(length, itertools.chain(FIRST_CHUNKS, itertools.repeat(size)))


def _cut(length: int, sizes) -> tuple[int, ...]:
    """`length` positions cut in pieces of the `sizes` given in turn (the last piece shorter)."""
    pieces, done = [], 0
    for size in sizes:
        if done >= length:
            break
        pieces.append(min(size, length - done))
        done += pieces[-1]
    return tuple(pieces)


@dataclass(frozen=True)
class Plan:
    """The positions of one prompt: `chunks` (sizes, from position 0) prefilled through the cache, then
    `tail` positions decoded one token at a time."""

    mode: str
    chunks: tuple[int, ...]
    tail: int

    @property
    def pieces(self) -> list[int]:
        """The size of each forward call, in order."""
        return [*self.chunks, *[1] * self.tail]

    @property
    def prefilled(self) -> int:
        """Positions 0 .. prefilled - 1 go through chunks; the rest one at a time."""
        return sum(self.chunks)

    def boundaries(self) -> list[int]:
        """The first position of every chunk after the first (where a chunk meets a cache)."""
        return list(itertools.accumulate(self.chunks))[:-1] if self.chunks else []

    def piece_of(self, position: int) -> str:
        """Which path computed `position`, in words: "chunk 7–70" or "decoded one token at a time"."""
        start = 0
        for size in self.chunks:
            if position < start + size:
                return f"in prefill chunk {start}–{start + size - 1}"
            start += size
        return "decoded one token at a time"

    def as_dict(self) -> dict:
        """The report's figures: the mode, each chunk's positions [first, last], the positions decoded
        one at a time [first, last] (None when none), and the forward calls each pass makes."""
        starts = [0, *itertools.accumulate(self.chunks)]
        length = self.prefilled + self.tail
        return {
            "mode": self.mode,
            "chunks": [[s, s + n - 1] for s, n in zip(starts, self.chunks, strict=False)],
            "one_token_at_a_time": [self.prefilled, length - 1] if self.tail else None,
            "forward_calls": len(self.chunks) + self.tail,
        }

    def describe(self) -> str:
        """One line for a message: "default: positions 0–63 in 2 chunks, 64–95 one token at a time"."""
        parts = []
        if self.tail and not self.chunks:
            return f"{self.mode}: positions 0–{self.tail - 1} one token at a time"
        if self.chunks:
            n = len(self.chunks)
            parts.append(f"positions 0–{self.prefilled - 1} in {n} chunk{'s' if n > 1 else ''}")
        if self.tail:
            parts.append(f"{self.prefilled}–{self.prefilled + self.tail - 1} one token at a time")
        return f"{self.mode}: {', '.join(parts) or 'no positions'}"


def parse_mode(spec: str | Mode | None) -> Mode:
    """An incremental mode from its spec: "default" (or None), "tokens", "chunks:16" or "chunks:16,64"."""
    if isinstance(spec, Mode):
        return spec
    text = DEFAULT if spec is None else str(spec).strip()
    if text in (DEFAULT, "tokens"):
        return Mode(text)
    name, _, sizes = text.partition(":")
    if name.strip() != "chunks" or not sizes.strip():
        raise UserError(f"unknown incremental mode {text!r} (choose from: {MODES})")
    try:
        values = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise UserError(f"chunk sizes must be integers >= 1, got {sizes!r}") from None
    if any(v < 1 for v in values):
        raise UserError(f"chunk sizes must be integers >= 1, got {sizes!r}")
    return Mode("tokens") if set(values) == {1} else Mode("chunks", values)
