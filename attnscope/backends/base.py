"""The attention interface's contract, and what every implementation of it shares.

`AttendFn` is the type of a backend's attend function (see `attnscope.backends` for the contract);
`validate_shapes` validates its arguments; `group_mask` views a mask per kv group; `apply_sinks` adds
learned sink logits to an attention over the keys; `supports` says whether a function implements an
optional feature (`FEATURES`); `note_lse_source` / `take_lse_source` pass where a call's lse came
from to the recorder. The implementations (eager, sdpa, flex, and the Triton kernels) import this
module, never the registry in `attnscope.backends`, which imports them.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable

import torch

from attnscope.masks import MaskSpec

AttendFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

FEATURES = {"softcap": "attention logit soft-capping", "sinks": "attention sinks"}


_LSE_SOURCE = threading.local()


def note_lse_source(source: str) -> None:
    """Called by a backend in each attention call: where that call's lse comes from (a kernel's
    name, or ``eager`` for the eager reference's pass)."""
    _LSE_SOURCE.value = source


def take_lse_source() -> str | None:
    """The source the last attention call in this thread noted (None when it noted none), cleared."""
    source = getattr(_LSE_SOURCE, "value", None)
    _LSE_SOURCE.value = None
    return source


def supports(attend: AttendFn, feature: str) -> bool:
    """Whether `attend` accepts the keyword of `feature` (see the module docstring). Asked for every
    layer of every forward, so a function's signature is read once (an unhashable callable each time)."""
    try:
        return _accepts(attend, feature)
    except TypeError:  # unhashable: not cacheable
        return _accepts.__wrapped__(attend, feature)


@functools.lru_cache(maxsize=64)
def _accepts(attend: AttendFn, feature: str) -> bool:
    try:
        params = inspect.signature(attend).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == feature or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def apply_sinks(out: torch.Tensor, lse_keys: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and lse ``[B, Hq, Sq]`` of an attention over the keys alone, with one sink logit per
    query head (``[Hq]``) joining each row's softmax: the sink adds a term to the denominator and
    nothing to the values, so the output is rescaled by ``exp(lse_keys - lse)``."""
    lse = torch.logaddexp(lse_keys.float(), sinks.float().view(1, -1, 1))
    return out * torch.exp(lse_keys - lse).unsqueeze(-1).to(out.dtype), lse


def validate_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec) -> None:
    """Validate the attention interface's shapes; raises ValueError naming the mismatch."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, S, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    (B, Hq, Sq, D), (Bk, Hkv, Sk, Dk) = q.shape, k.shape
    if B != Bk or D != Dk:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) not divisible by kv heads ({Hkv})")
    if Sq > Sk:
        raise ValueError(f"more queries ({Sq}) than keys ({Sk})")
    if not isinstance(mask, MaskSpec):
        raise TypeError(f"mask must be a MaskSpec, got {type(mask).__name__}")


def group_mask(allowed: torch.Tensor, n_kv: int) -> torch.Tensor:
    """View a ``[B|1, Hq|1, Sq, Sk]`` mask as ``[B|1, Hkv|1, G|1, Sq, Sk]`` to match grouped scores."""
    b, h, sq, sk = allowed.shape
    if h == 1:
        return allowed.unsqueeze(2)
    return allowed.reshape(b, n_kv, h // n_kv, sq, sk)
