"""Colormaps: a perceptual, colorblind-safe viridis ramp; a shade ramp for terminals without color;
and the scales (linear or log) that map a weight to [0, 1]."""

from __future__ import annotations

import functools
import math

# viridis sampled at 9 evenly spaced points (matplotlib's _viridis_data)
_VIRIDIS = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
]
SHADES = " ░▒▓█"
MASKED_COLOR = "#3a3a3a"  # masked cells: neutral gray, distinct from viridis' dark purple for 0
NONFINITE_COLOR = "#ff2020"
LOG_DECADES = 4  # log scale spans top / 10**4 .. top


def in_color(console) -> bool:
    """Whether a rich console draws colors: not when stdout is not a terminal or with --color never
    (no color system), nor when NO_COLOR is set (rich keeps the color system then and drops every
    color, so a map drawn in colors would come out blank)."""
    return console.color_system is not None and not console.no_color


def viridis(x: float) -> str:
    """Hex color of x in [0, 1] on the viridis ramp (values outside are clamped; 1024 levels)."""
    return _viridis(round(min(1.0, max(0.0, x)) * 1023))


def viridis_table() -> list[str]:
    """The 1024 hex colors of the ramp, for vectorized lookups."""
    return [_viridis(level) for level in range(1024)]


@functools.lru_cache(maxsize=1024)
def _viridis(level: int) -> str:
    x = level / 1023 * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    t = x - i
    r, g, b = (round(a + (c - a) * t) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def shade(x: float) -> str:
    """One character of the shade ramp for x in [0, 1]."""
    x = min(1.0, max(0.0, x))
    return SHADES[min(len(SHADES) - 1, round(x * (len(SHADES) - 1)))]


class Scale:
    """Maps values in [low, top] to [0, 1], linearly or by decades (log)."""

    def __init__(self, top: float, log: bool = False, low: float | None = None):
        self.top = top if top > 0 and math.isfinite(top) else 1.0
        self.log = log
        self.low = low if low is not None else (self.top / 10**LOG_DECADES if log else 0.0)

    def __call__(self, x: float) -> float:
        if self.log:
            if x <= self.low:
                return 0.0
            return (math.log10(x) - math.log10(self.low)) / (math.log10(self.top) - math.log10(self.low))
        return (x - self.low) / (self.top - self.low) if self.top > self.low else 0.0

    def array(self, x):
        """`__call__` over a numpy array: values in [0, 1] (non-finite values map to 0)."""
        import numpy as np

        x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if self.log:
            decades = math.log10(self.top) - math.log10(self.low)
            out = (np.log10(np.maximum(x, self.low)) - math.log10(self.low)) / decades
        else:
            out = (x - self.low) / (self.top - self.low) if self.top > self.low else np.zeros_like(x)
        return np.clip(out, 0.0, 1.0)

    def label(self) -> str:
        kind = "log" if self.log else "linear"
        return f"{kind} {format_number(self.low)} … {format_number(self.top)}"


def format_number(x: float) -> str:
    """A scale's end as a legend shows it: 1e-05, 0.142, 3e+03."""
    return f"{x:.0e}" if x and (abs(x) < 1e-2 or abs(x) >= 1e3) else f"{x:.3g}"
