"""Axis lines: positions written every few columns under or over a map."""

from __future__ import annotations


def axis(edges, n: int, step: int = 10, cell: int = 1) -> str:
    """A line for n columns of `cell` characters each, with the start position of column j
    (``edges[j]``) written at every `step`-th column where it fits whole (a label is never cut)."""
    line = [" "] * (n * cell)
    for j in range(0, n, step):
        text = str(int(edges[j]))
        if j * cell + len(text) <= n * cell:
            line[j * cell : j * cell + len(text)] = text
    return "".join(line)
