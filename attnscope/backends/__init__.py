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

A backend may also offer ``attend.pooled_probabilities(q [Sq, D], k [Sk, D], lse [Sq], *, scale,
mask, q_offset, rows, cols, pool, reduce) -> [h, w]``: how the views get a pooled map of one head
from its own kernel (the triton backend's probability kernel); without it they recompute the map
from q, k and the lse in float32.

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

``auto`` (the default of the command line and of `attnscope.Scope`) is not a backend but a choice:
per model, the fastest built-in backend that implements every feature the model's layers use, on
the model's device (`choose_backend`, `FASTEST_FIRST`; the triton kernels are chosen only by name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from attnscope.backends.base import (
    FEATURES,
    AttendFn,
    apply_sinks,
    group_mask,
    note_lse_source,
    supports,
    take_lse_source,
    validate_shapes,
)
from attnscope.errors import BackendUnavailable, UnsupportedFeature, UserError

__all__ = [
    "FEATURES",
    "AttendFn",
    "AUTO",
    "FASTEST_FIRST",
    "apply_sinks",
    "available_backends",
    "choose_backend",
    "backend_name",
    "get_backend",
    "group_mask",
    "note_lse_source",
    "register_backend",
    "require_features",
    "supports",
    "take_lse_source",
    "validate_backend",
    "validate_shapes",
]


def _eager() -> AttendFn:
    from attnscope.backends.eager import attend

    return attend


def _sdpa() -> AttendFn:
    from attnscope.backends.sdpa import attend

    return attend


def _flex() -> AttendFn:
    from attnscope.backends import flex

    reason = flex.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend 'flex' is not available: {reason}")
    return flex.attend


def _triton() -> AttendFn:
    from attnscope import kernels

    reason = kernels.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"backend 'triton' is not available: {reason}")
    return kernels.attend


# the one registry: a name -> how to get its attend function (built-ins import their module only when
# asked for: flex pulls in torch's compiler stack, triton the kernels)
_BUILT_IN: dict[str, Callable[[], AttendFn]] = {"eager": _eager, "sdpa": _sdpa, "flex": _flex, "triton": _triton}
BACKEND_NAMES = tuple(_BUILT_IN)
_REGISTERED: dict[str, AttendFn] = {}


AUTO = "auto"
# the built-in backends, fastest first, per device type (benchmarks/backends.py): on a GPU torch's
# fused SDPA, then FlexAttention compiled, then the eager reference; on a CPU SDPA, then eager
# (FlexAttention runs uncompiled there, several times slower than eager)
FASTEST_FIRST = {"cuda": ("sdpa", "flex", "eager"), "cpu": ("sdpa", "eager")}


def choose_backend(features: Iterable[str], device_type: str) -> tuple[str, str]:
    """The fastest built-in backend that runs on `device_type` and implements every one of
    `features` (names of `FEATURES`), and why, in one line for reports: "auto: the fastest on cpu",
    or what ruled out the faster ones ("auto: sdpa does not implement attention logit soft-capping")."""
    used = list(features)
    passed_over = []
    for name in FASTEST_FIRST.get(device_type, FASTEST_FIRST["cpu"]):
        try:
            attend = get_backend(name)
        except BackendUnavailable:
            passed_over.append(f"{name} is not available")
            continue
        lacking = [FEATURES[f] for f in used if not supports(attend, f)]
        if lacking:
            passed_over.append(f"{name} does not implement {' or '.join(lacking)}")
            continue
        return name, "auto: " + ("; ".join(passed_over) if passed_over else f"the fastest on {device_type}")
    raise UserError(f"no backend implements {', '.join(FEATURES[f] for f in used)} on {device_type}")


def register_backend(name: str, attend: AttendFn) -> None:
    """Make your own attention function available as ``backend=name`` everywhere (Scope, checks).

    `attend` follows the contract above. This is how a kernel under development is compared with
    the eager reference: ``Scope(model, backend=name).run(prompt, checks="all")``.
    """
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in backend")
    _REGISTERED[name] = attend


def available_backends() -> list[str]:
    return [*_BUILT_IN, *_REGISTERED]


def get_backend(name: str) -> AttendFn:
    """The attend function of backend `name`; a clear error when unknown or unavailable."""
    if name == AUTO:
        raise UserError("backend 'auto' is a choice made per model: resolve it with choose_backend")
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILT_IN:
        return _BUILT_IN[name]()
    raise UserError(f"unknown backend {name!r} (choose from: auto, {', '.join(available_backends())})")


def validate_backend(name: str) -> None:
    """A clear error, before any work, for a backend that is unknown or cannot run here (``auto``
    always can: it chooses among the built-ins that do)."""
    if name != AUTO:
        get_backend(name)


def backend_name(attend: AttendFn) -> str:
    """The name `attend` is known by (a built-in or registered backend), else its function name."""
    for name in available_backends():
        try:
            if get_backend(name) is attend:
                return name
        except UserError:
            continue
    return getattr(attend, "__name__", repr(attend))


def require_features(attend: AttendFn, features: dict, where: str) -> dict:
    """The features of `features` that are set (not None), after checking that `attend` implements
    each; raises `UnsupportedFeature` naming the feature, the backend and `where` it is used."""
    used = {name: value for name, value in features.items() if value is not None}
    for name in used:
        if not supports(attend, name):
            raise UnsupportedFeature(
                f"{where} uses {FEATURES[name]}, which backend {backend_name(attend)!r} "
                f"does not implement (backend 'auto' chooses one that does)"
            )
    return used
