"""The flex backend: ``torch.nn.attention.flex_attention``, PyTorch's attention with masks as predicates.

The layer's `MaskSpec` becomes a ``BlockMask`` through its `MaskSpec.mask_mod`, so every mask kind
runs (causal, sliding window, padding, documents, prefix-LM, chunked, custom tensors); block masks
are cached per (spec, rows, keys, batch, heads, device). The lse is the kernel's own
(``return_aux=AuxRequest(lse=True)``), GQA goes through ``enable_gqa`` (no copies), logit
soft-capping is a ``score_mod`` and attention sinks rescale the output by the lse
(`attnscope.backends.apply_sinks`). A row with no allowed key gives out = 0 and lse = -inf.

Compiled where torch compiles it with the lse: on CUDA, ``torch.compile(flex_attention)`` (if the
first compiled call fails, that device type runs eager from then on). On the CPU, torch 2.13's
compiled flex_attention refuses the lse ("torch.compile on CPU only supports inference and
`return_lse` is not supported yet"), so the eager flex path runs: it materializes the scores of a
call, so this backend calls it on chunks of query rows (each with its own block mask) of at most
`attnscope.backends.eager.MAX_SCORE_ELEMENTS` scores.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from attnscope.backends import eager
from attnscope.backends.base import apply_sinks, note_lse_source, validate_shapes
from attnscope.masks import MaskSpec

_run_by_device: dict[str, Callable[..., Any]] = {}  # device type -> the flex_attention that runs there


def unavailable_reason() -> str | None:
    """Why FlexAttention cannot run with this torch, or None when it can."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention  # noqa: F401
    except ImportError as exc:
        return f"this torch ({torch.__version__}) has no flex_attention with return_aux ({exc})"
    return None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MaskSpec,
    scale: float,
    *,
    need_lse: bool = True,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention through FlexAttention; see `attnscope.backends` for the contract."""
    validate_shapes(q, k, v, mask)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if not q.numel():  # no rows: nothing for flex_attention to do
        return torch.zeros_like(q), torch.zeros(B, Hq, Sq, device=q.device) if need_lse else None
    dense = mask.dense(Sq, Sk, q.device)  # cached
    batch, heads = (B if dense.shape[0] > 1 else None), (Hq if dense.shape[1] > 1 else None)
    every_key = bool(dense.all())  # a causal decode step: no block mask at all
    compiled = q.device.type == "cuda"
    step = Sq if compiled else max(1, eager.MAX_SCORE_ELEMENTS // max(1, B * Hq * Sk))
    outs, lses = [], []
    for start in range(0, Sq, step):
        rows = min(step, Sq - start)
        block_mask = None if every_key else _block_mask(mask, rows, Sq - start, Sk, batch, heads, str(q.device))
        out, lse = _flex(q[:, :, start : start + rows], k, v, block_mask, scale, softcap, Hq != Hkv)
        outs.append(out)
        lses.append(lse)
    out = torch.cat(outs, dim=2) if len(outs) != 1 else outs[0]  # (B, Hq, Sq, D)
    lse = torch.cat(lses, dim=2) if len(lses) != 1 else lses[0]  # (B, Hq, Sq)
    note_lse_source("flex_attention")
    if sinks is not None:
        return apply_sinks(out, lse.float(), sinks)
    return out, lse.float() if need_lse else None


def _flex(q, k, v, block_mask, scale: float, softcap: float | None, gqa: bool):
    """(out, lse) of one flex_attention call, compiled on CUDA (eager when compiling fails)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    score_mod = None if softcap is None else _softcap(softcap)
    kwargs = dict(
        score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa, return_aux=AuxRequest(lse=True)
    )
    device_type = q.device.type
    run = _run_by_device.get(device_type)
    if run is None and device_type == "cuda":
        compiled = torch.compile(flex_attention)
        try:
            out, aux = compiled(q, k, v, **kwargs)
        except Exception:  # no compiler for this device or these inputs: the eager path from now on
            _run_by_device[device_type] = flex_attention
        else:
            _run_by_device[device_type] = compiled
            return out, aux.lse
    with warnings.catch_warnings():  # "called without torch.compile()": known, see the module docstring
        warnings.simplefilter("ignore", UserWarning)
        out, aux = (run or flex_attention)(q, k, v, **kwargs)
    return out, aux.lse


@functools.cache
def _softcap(softcap: float):
    """The score_mod of logit soft-capping ``c · tanh(score / c)``."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return score_mod


@functools.lru_cache(maxsize=64)
def _block_mask(mask: MaskSpec, rows: int, q_len: int, k_len: int, batch: int | None, heads: int | None, device: str):
    """The BlockMask of `rows` query rows starting at query ``Sq - q_len`` of a call with `k_len` keys."""
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask.mask_mod(q_len, k_len), batch, heads, rows, k_len, device=device)
