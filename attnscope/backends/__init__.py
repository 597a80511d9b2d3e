"""Attention backends: one interface, several implementations.

Every backend is a function

    attend(q, k, v, mask, scale, *, need_lse=True) -> (out, lse)

with q ``[B, Hq, Sq, D]``, k and v ``[B, Hkv, Sk, D]`` (Sk = past + Sq: the KV cache and the new
tokens), `mask` a `MaskSpec` (bottom-right aligned), out ``[B, Hq, Sq, D]`` in q's dtype and lse
``[B, Hq, Sq]`` float32: the log-sum-exp of the scaled, masked scores of each row, so any attention
probability can be recomputed later as ``exp(q·k·scale - lse)``. Query head h reads kv head
``h // (Hq // Hkv)``. A row whose every key is masked gives out = 0 and lse = -inf, never NaN.
With ``need_lse=False`` a backend may skip the lse and return None in its place.

Two optional features, passed only when a layer uses them (models of the ``hf`` engine do):

- ``softcap=c`` (float): logit soft-capping, scores become ``c * tanh(score / c)`` after the scale
  and before the mask (Gemma 2);
- ``sinks=s`` (float ``[Hq]``): one learned sink logit per query head that joins each row's softmax
  and takes probability mass but has no value (gpt-oss). The lse includes it, so the weights
  recomputed from the lse are the model's own and sum to less than 1.

A backend implements a feature by accepting its keyword; the caller refuses a backend that does
not (`require_features`), naming the feature: it is never silently computed without it.

Where the lse of a call comes from: a backend says so with `note_lse_source` (the kernel that
produced the output, or ``eager`` when the eager reference's pass recomputed it); the recorder of
the forward takes it with `take_lse_source` and the report shows it. A backend that notes nothing
computed its own.

- ``eager``: float32, explicit scores and softmax; the reference.
- ``sdpa``: torch ``scaled_dot_product_attention``; the lse from the fused kernel's own output.
- ``flex``: torch ``flex_attention``: any mask as a block mask, the lse from the kernel.
- ``triton``: the kernels of ``attnscope.kernels`` (needs Triton; see that package).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable

import torch

from attnscope.errors import BackendUnavailable, UnsupportedFeature, UserError
from attnscope.masks import MaskSpec

AttendFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]

BACKEND_NAMES = ("eager", "sdpa", "flex", "triton")
FEATURES = {"softcap": "attention logit soft-capping", "sinks": "attention sinks"}
_REGISTERED: dict[str, AttendFn] = {}


def register_backend(name: str, attend: AttendFn) -> None:
    """Make your own attention function available as ``backend=name`` everywhere (Scope, checks).

    `attend` follows the contract above. This is how a kernel under development is compared with
    the eager reference: ``Scope(model, backend=name).run(prompt, checks="all")``.
    """
    if name in BACKEND_NAMES:
        raise ValueError(f"{name!r} is a built-in backend")
    _REGISTERED[name] = attend


def available_backends() -> list[str]:
    return [*BACKEND_NAMES, *_REGISTERED]


def get_backend(name: str) -> AttendFn:
    """The attend function of backend `name`; a clear error when unknown or unavailable."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name == "eager":
        from attnscope.backends.eager import attend
    elif name == "sdpa":
        from attnscope.backends.sdpa import attend
    elif name == "flex":
        from attnscope.backends import flex

        reason = flex.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend 'flex' is not available: {reason}")
        attend = flex.attend
    elif name == "triton":
        from attnscope import kernels

        reason = kernels.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend 'triton' is not available: {reason}")
        attend = kernels.attend
    else:
        raise UserError(f"unknown backend {name!r} (choose from: {', '.join(available_backends())})")
    return attend


def backend_name(attend: AttendFn) -> str:
    """The name `attend` is known by (a built-in or registered backend), else its function name."""
    for name in available_backends():
        try:
            if get_backend(name) is attend:
                return name
        except UserError:
            continue
    return getattr(attend, "__name__", repr(attend))


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


def require_features(attend: AttendFn, features: dict, where: str) -> dict:
    """The features of `features` that are set (not None), after checking that `attend` implements
    each; raises `UnsupportedFeature` naming the feature, the backend and `where` it is used."""
    used = {name: value for name, value in features.items() if value is not None}
    for name in used:
        if not supports(attend, name):
            raise UnsupportedFeature(f"{where} uses {FEATURES[name]}, which backend {backend_name(attend)!r} "
                                     f"does not implement (use --backend eager)")
    return used


def apply_sinks(out: torch.Tensor, lse_keys: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and lse ``[B, Hq, Sq]`` of an attention over the keys alone, with one sink logit per
    query head (``[Hq]``) joining each row's softmax: the sink adds a term to the denominator and
    nothing to the values, so the output is rescaled by ``exp(lse_keys - lse)``."""
    lse = torch.logaddexp(lse_keys.float(), sinks.float().view(1, -1, 1))
    return out * torch.exp(lse_keys - lse).unsqueeze(-1).to(out.dtype), lse


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec) -> None:
    """Validate the attention interface's shapes; raises ValueError naming the mismatch."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, S, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
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
