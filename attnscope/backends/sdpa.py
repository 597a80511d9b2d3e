"""The SDPA backend: torch's fused attention kernels, with the log-sum-exp the kernel computed.

The public ``scaled_dot_product_attention`` does not return the lse, so this backend calls the ATen
op that it dispatches to and that does: ``_scaled_dot_product_flash_attention_for_cpu`` on the CPU;
on CUDA ``_scaled_dot_product_flash_attention`` (float16/bfloat16, no mask) or
``_scaled_dot_product_efficient_attention`` (an additive mask, float32 too). The lse then describes
the kernel that produced the output. The ops are private, so each is looked up once and its GQA
support probed once per device type: k and v are expanded to the query heads only for an op that
reads one kv head per query head. When an op is missing or refuses the inputs (a dtype, a head dim,
a mask it cannot take), the public call runs and the lse is recomputed by the eager reference's
float32 pass over the same q and k. Which one ran is noted for the report
(`attnscope.backends.note_lse_source`: the op's name, or ``eager``).

Masks: the square causal mask is the kernel's ``is_causal`` (top-left and bottom-right alignment
coincide there); the single query row of a causal decode step sees every key (no mask); any other
spec is passed as its additive mask. Rows with no allowed key get out = 0 and lse = -inf, as the
interface requires (kernels return 0 or NaN there), and a query row holding a NaN or Inf gets lse
NaN: under ``is_causal`` the CPU kernel writes 0 for it, which would hide it from the inspector.

A decode step (one query row) of grouped-query attention whose mask is the same for every head runs
each kv group's query heads as the rows of one head, as flash-decoding kernels pack GQA: the same
kernel and the same arithmetic per row, with K and V read once per kv head instead of once per query
head (half the time at 4096 cached tokens on the CPU).

Attention sinks (``sinks=``) are applied after the call (`attnscope.backends.apply_sinks`: a sink
only adds a term to each row's softmax denominator). Logit soft-capping has no SDPA form; this
backend does not accept it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnscope.backends.base import apply_sinks, note_lse_source, validate_shapes
from attnscope.backends.eager import log_sum_exp
from attnscope.masks import Causal, MaskSpec

CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
CUDA_FLASH = "_scaled_dot_product_flash_attention"
CUDA_EFFICIENT = "_scaled_dot_product_efficient_attention"
# an op that raised for inputs of this kind is not asked again: (op, device type, dtype, head dim, masked)
_refused: set[tuple] = set()
_OP_ERRORS = (RuntimeError, ValueError, TypeError, NotImplementedError)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MaskSpec,
    scale: float,
    *,
    need_lse: bool = True,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention through torch's SDPA kernels; see `attnscope.backends` for the contract."""
    validate_shapes(q, k, v, mask)
    Sq, Sk = q.shape[2], k.shape[2]
    causal = isinstance(mask, Causal) and Sq == Sk
    bias = None if isinstance(mask, Causal) and Sq in (1, Sk) else mask.additive(Sq, Sk, q.dtype, q.device)
    want_lse = need_lse or sinks is not None
    found = _kernel(q, k, v, bias, causal, scale)
    if found is None:
        note_lse_source("eager")
        out, lse_keys = _public(q, k, v, mask, scale, causal, bias is not None), None
        if want_lse:
            lse_keys = log_sum_exp(q, k, mask, scale)  # (B, Hq, Sq)
    else:
        (out, lse_keys), source = found
        note_lse_source(source)
        if bias is not None:
            empty = mask.fully_masked_rows(Sq, Sk, q.device)  # (B|1, Hq|1, Sq)
            out = out.masked_fill(empty.unsqueeze(-1), 0.0)  # unconditionally: asking first would sync
            lse_keys = lse_keys.masked_fill(empty, float("-inf"))
        if want_lse:  # NaN where the row's q holds a NaN or Inf: lse + 0 · (a non-finite sum) is NaN
            lse_keys = lse_keys.float().add(q.sum(-1, dtype=torch.float32), alpha=0.0)
    if sinks is None:
        return out, lse_keys if need_lse else None
    assert lse_keys is not None  # want_lse: always computed when there are sinks
    return apply_sinks(out, lse_keys, sinks)


@functools.cache
def _candidates(device_type: str, dtype: torch.dtype, masked: bool) -> tuple[str, ...]:
    """The lse-returning ops to try, in the order torch's own dispatch prefers them."""
    if device_type == "cpu":
        return (CPU_FLASH,)
    if device_type == "cuda":
        flash = (CUDA_FLASH,) if not masked and dtype in (torch.float16, torch.bfloat16) else ()
        return (*flash, CUDA_EFFICIENT)
    return ()


@functools.cache
def _op(name: str):
    """ATen op `name` of this torch, or None when it has none."""
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return None


def _call(name: str, q, k, v, bias, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, Sq, D], lse [B, Hq, Sq]) of op `name`; raises what the op raises."""
    op = _op(name)
    if name == CPU_FLASH:
        out, lse = op(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
    elif name == CUDA_FLASH:
        out, lse = op(q, k, v, 0.0, causal, False, scale=scale)[:2]
    else:
        out, lse = op(q, k, v, bias, True, 0.0, causal, scale=scale)[:2]
    return out, lse[..., : q.shape[2]]  # the efficient kernel pads the rows of its lse


@functools.cache
def takes_gqa(name: str, device_type: str) -> bool:
    """Whether op `name` reads kv head h // (Hq // Hkv) itself: probed once per device type on a
    tiny input against the same call with k and v expanded."""
    dtype = torch.float16 if name == CUDA_FLASH else torch.float32
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 4, 16, generator=gen).to(device_type, dtype) for h in (2, 1, 1))
    try:
        out, _ = _call(name, q, k, v, None, True, 0.25)
    except _OP_ERRORS:
        return False
    want, _ = _call(name, q, _expand(k, 2), _expand(v, 2), None, True, 0.25)
    return out.shape == want.shape and bool(torch.equal(out, want))


def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, Hkv, S, D]`` as ``[B, heads, S, D]``, query head h reading kv head h // (heads // Hkv) (a copy)."""
    B, Hkv, S, D = x.shape
    return x.unsqueeze(2).expand(B, Hkv, heads // Hkv, S, D).reshape(B, heads, S, D)


def _aligned(bias: torch.Tensor, q: torch.Tensor, Sk: int) -> torch.Tensor:
    """The additive mask as the efficient kernel reads it: row strides a multiple of 16 elements
    (padded and sliced, as SDPA's own dispatch does), expanded to ``[B, Hq, Sq, Sk]``."""
    if bias.stride(-1) != 1 or any(s % 16 for s in bias.stride()[:-1]):
        bias = F.pad(bias, (0, -Sk % 16))[..., :Sk]
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], Sk)


def _kernel(q, k, v, bias, causal: bool, scale: float):
    """((out, lse), source) from the first op that takes these inputs, or None."""
    if not q.numel() or not k.numel():
        return None  # nothing to attend: the public call handles empty tensors (the CPU op divides by zero)
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    packed = Sq == 1 and Hq > Hkv and (bias is None or bias.shape[1] == 1)
    if packed:  # a decode step: the query heads of each kv group as the rows of one head (one mask for all)
        q, causal = q.reshape(B, Hkv, Hq // Hkv, D), False
    for name in _candidates(q.device.type, q.dtype, bias is not None):
        key = (name, q.device.type, q.dtype, D, bias is not None)
        if _op(name) is None or key in _refused:
            continue
        kk, vv = (k, v) if q.shape[1] == Hkv or takes_gqa(name, q.device.type) else (_expand(k, Hq), _expand(v, Hq))
        b = _aligned(bias, q, k.shape[2]) if bias is not None and name == CUDA_EFFICIENT else bias
        try:
            out, lse = _call(name, q, kk, vv, b, causal, scale)
        except _OP_ERRORS:
            _refused.add(key)
            continue
        if packed:
            out, lse = out.reshape(B, Hq, 1, D), lse.reshape(B, Hq, 1)
        return (out, lse), f"aten.{name}"
    return None


def _public(q, k, v, mask: MaskSpec, scale: float, causal: bool, masked: bool) -> torch.Tensor:
    """The output of the public ``scaled_dot_product_attention``, rows with no allowed key set to 0."""
    if not masked:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
    allowed = mask.dense(q.shape[2], k.shape[2], q.device)  # (B|1, Hq|1, Sq, Sk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # unconditionally: asking would sync
