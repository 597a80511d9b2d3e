"""attnscope.kernels: Triton attention kernels (installed from the repository's `kernels/` folder).

- `attention(q, k, v, *, causal=True, q_offset=None, window=None, scale=None, return_lse=False)`:
  fused attention forward with GQA, bottom-right causal alignment, ragged per-batch offsets,
  sliding windows and split-KV decoding (`flash.py`).
- `attention_probs(q, k, lse, ...)`: one head's probabilities recomputed from the lse, an exact
  region or a pooled map, tile by tile (`probs.py`).
- `attend(q, k, v, mask, scale, *, need_lse=True)`: the ``triton`` backend of `attnscope.backends`.
- `unavailable_reason()`: why the kernels cannot run here, or None when they can.
- ``python -m attnscope.kernels.compile_check``: compiles every kernel variant for a CUDA target
  without a GPU (what the interpreter cannot check: layouts, shared memory, tl.dot shapes).

Triton is imported lazily, only when a kernel is asked for (``attnscope.kernels.attention`` is
resolved on first access): importing this package never imports triton. Without a CUDA GPU the
kernels run in Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1`` is in the
environment before triton is first imported in the process (Triton decides then, for its own
``tl.*`` library too); slow, for tests and debugging.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

import torch

from attnscope import masks
from attnscope.errors import BackendUnavailable

if TYPE_CHECKING:
    from attnscope.kernels.flash import attention
    from attnscope.kernels.probs import attention_probs

__all__ = ["attend", "attention", "attention_probs", "mask_window", "unavailable_reason"]

_LAZY = {"attention": "attnscope.kernels.flash", "attention_probs": "attnscope.kernels.probs"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def unavailable_reason() -> str | None:
    """Why the Triton backend cannot run on this machine, or None.

    The kernels run when triton is installed and either a CUDA GPU is present or the environment
    has ``TRITON_INTERPRET=1`` (Triton's interpreter, on CPU tensors).
    """
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed: pip install 'attnscope[triton]' (Linux x86_64)"
    if interpreter_requested() or torch.cuda.is_available():
        return None
    return "no CUDA GPU: set TRITON_INTERPRET=1 to run the Triton kernels in the (slow) interpreter on CPU"


def interpreter_requested() -> bool:
    """Whether the environment asks for Triton's interpreter (TRITON_INTERPRET=1, as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


def mask_window(mask: masks.MaskSpec) -> int | None:
    """The kernel arguments of a mask spec: None for ``causal``, the window w for
    ``sliding_window(w)`` or ``causal & sliding_window(w)`` (the smallest of several windows).

    Raises:
        BackendUnavailable: for any other spec (padding, document, prefix-LM, chunked, custom, ``|``):
            the kernel cannot express it and the backend never falls back silently.
    """
    windows = []
    for part in _and_parts(mask):
        if type(part) is masks.SlidingWindow:
            windows.append(part.window)
        elif type(part) is not masks.Causal:
            raise BackendUnavailable(f"the triton backend supports causal and sliding-window masks, not {mask!r}")
    return min(windows) if windows else None


def _and_parts(mask: masks.MaskSpec) -> list[masks.MaskSpec]:
    if type(mask) is masks.And:
        return [*_and_parts(mask.left), *_and_parts(mask.right)]
    return [mask]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: masks.MaskSpec, scale: float, *, need_lse: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``triton`` backend: `attention` with the spec's causal / window arguments; see
    `attnscope.backends` for the contract. The lse is always returned (the kernel computes it anyway).

    Raises:
        BackendUnavailable: Triton cannot run here, the tensors are on a device the kernels cannot
            use, or the mask is not causal / sliding-window.
    """
    from attnscope.backends.base import note_lse_source, validate_shapes

    validate_shapes(q, k, v, mask)
    window = mask_window(mask)
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend 'triton' is not available: {reason}")
    from attnscope.kernels.flash import INTERPRETING, attention

    if q.device.type != "cuda" and not (INTERPRETING and q.device.type == "cpu"):
        raise BackendUnavailable(
            f"the triton backend needs CUDA tensors, got {q.device} "
            "(or TRITON_INTERPRET=1 before the first kernel call, for CPU tensors)"
        )
    note_lse_source("triton")
    return attention(q, k, v, causal=True, window=window, scale=scale, return_lse=True)


def pooled_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    mask: masks.MaskSpec,
    q_offset: int,
    rows: slice,
    cols: slice,
    pool: tuple[int, int],
    reduce: str,
) -> torch.Tensor:
    """The triton backend's pooled map of one head (q ``[Sq, D]``, k ``[Sk, D]``, lse ``[Sq]``), from the
    probability kernel (`attention_probs`): how the views recompute this backend's probabilities."""
    from attnscope.kernels.probs import attention_probs

    return attention_probs(
        q,
        k,
        lse,
        scale=scale,
        causal=True,
        window=mask_window(mask),
        q_offset=q_offset,
        rows=rows,
        cols=cols,
        pool=pool,
        reduce=reduce,
    )


attend.pooled_probabilities = pooled_probabilities  # type: ignore[attr-defined]
