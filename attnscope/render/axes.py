"""Axis lines: positions written every few columns under or over a map."""

from __future__ import annotations


def axis(edges, n: int, step: int = 10) -> str:
    """A line of n columns with the start position of column j written at every `step`-th column."""
    line = [" "] * n
    for j in range(0, n, step):
        for k, ch in enumerate(str(int(edges[j]))):
            if j + k < n:
                line[j + k] = ch
    return "".join(line)
