"""Pooling of 2-D maps to a screen-sized grid (numpy). Shared by the heatmap and the mask grid."""

from __future__ import annotations

import numpy as np

_REDUCE = {"max": np.maximum, "any": np.logical_or, "sum": np.add}


def pool_edges(n: int, parts: int) -> np.ndarray:
    """Boundaries of at most `parts` nearly equal bins over range(n): ``[0, ..., n]``."""
    return np.linspace(0, n, max(1, min(n, parts)) + 1).round().astype(int)


def pool2d(x: np.ndarray, rows: int, cols: int, reduce: str = "max"):
    """Reduce a [R, C] map to at most rows x cols bins.

    Args:
        x: the map.
        rows, cols: the largest grid wanted.
        reduce: "max", "any" (logical or), "sum" or "mean".

    Returns:
        (pooled map, row edges, column edges); bin i covers rows ``re[i]:re[i+1]``.
    """
    re, ce = pool_edges(x.shape[0], rows), pool_edges(x.shape[1], cols)
    if x.size == 0:
        return x, re, ce
    op = _REDUCE["sum" if reduce == "mean" else reduce]
    pooled = op.reduceat(op.reduceat(x, re[:-1], axis=0), ce[:-1], axis=1)
    if reduce == "mean":
        pooled = pooled / np.outer(np.diff(re), np.diff(ce))
    return pooled, re, ce
