"""Axis lines: positions written every few columns under or over a map."""

from __future__ import annotations


def axis(edges, n: int, step: int = 10, cell: int = 1) -> str:
    """A line for n columns of `cell` characters each, with the start position of column j
    (``edges[j]``) written at every `step`-th column."""
    line = [" "] * (n * cell)
    for j in range(0, n, step):
        for k, ch in enumerate(str(int(edges[j]))):
            if j * cell + k < n * cell:
                line[j * cell + k] = ch
    return "".join(line)
