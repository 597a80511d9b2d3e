"""attnscope.kernels: Triton attention kernels (installed from the repository's `kernels/` folder).

Triton is imported lazily, only when a kernel is asked for. `unavailable_reason()` says why the
kernels cannot run here, or returns None when they can.
"""

from __future__ import annotations

import importlib.util


def unavailable_reason() -> str | None:
    """Why the Triton backend cannot run on this machine, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (it is a dependency on Linux x86_64 only)"
    return "the fused Triton attention kernels are not part of this version yet"
