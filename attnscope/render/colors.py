"""Colormaps: a perceptual, colorblind-safe viridis ramp, and a shade ramp for terminals without color."""

from __future__ import annotations

# viridis sampled at 9 evenly spaced points (matplotlib's _viridis_data)
_VIRIDIS = [
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
]
SHADES = " ░▒▓█"


def viridis(x: float) -> str:
    """Hex color of x in [0, 1] on the viridis ramp (values outside are clamped)."""
    x = min(1.0, max(0.0, x)) * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    t = x - i
    r, g, b = (round(a + (c - a) * t) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def shade(x: float) -> str:
    """One character of the shade ramp for x in [0, 1]."""
    x = min(1.0, max(0.0, x))
    return SHADES[min(len(SHADES) - 1, round(x * (len(SHADES) - 1)))]
