"""Attention masks as composable predicates.

A mask is a predicate ``(b, h, q_idx, kv_idx) -> bool`` (True = may attend), the convention of
FlexAttention's ``mask_mod`` and HF transformers' ``masking_utils``. Predicates are evaluated
vectorized on broadcast index tensors and always see *absolute* positions: with ``Sk = past + Sq``
keys, query row ``i`` has position ``past + i`` (bottom-right alignment, torch's
``causal_lower_right``). That is what KV-cache decoding needs: the new token at position ``past``
sees every cached key and itself.

Specs are frozen dataclasses (hashable), combined with ``&`` and ``|``; their ``repr`` is the readable
form printed by the report ("causal & sliding_window(4096)"). Views of one spec:

- ``dense(q_len, k_len)`` -> bool ``[B or 1, H or 1, Sq, Sk]``, cached in a bounded LRU;
- ``additive(q_len, k_len, dtype)`` -> 0 where allowed, ``torch.finfo(dtype).min`` where masked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


class MaskSpec:
    """Base class of mask specs. Subclasses implement `predicate` and `__repr__`."""

    def predicate(
        self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, b, h, q_idx, kv_idx):
        return self.predicate(b, h, q_idx, kv_idx)

    def __and__(self, other: MaskSpec) -> MaskSpec:
        return And(self, other)

    def __or__(self, other: MaskSpec) -> MaskSpec:
        return Or(self, other)

    def dense(self, q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask ``[B or 1, H or 1, q_len, k_len]``; the queries are the last `q_len` positions.

        Args:
            q_len: number of query rows (new tokens).
            k_len: number of keys, cache included; must be >= q_len.
            device: where the tensor lives.
        """
        return _dense_cached(self, q_len, k_len, str(torch.device(device or "cpu")))

    def additive(
        self, q_len: int, k_len: int, dtype: torch.dtype = torch.float32, device=None
    ) -> torch.Tensor:
        """Additive form: 0 where allowed, ``torch.finfo(dtype).min`` where masked.

        The finite minimum, not -inf: a row whose every key is masked then gives a uniform softmax
        instead of NaN (exp(-inf - -inf)). Not -1e9 either: that overflows to -inf in float16.
        """
        allowed = self.dense(q_len, k_len, device)
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def fully_masked_rows(self, q_len: int, k_len: int, device=None) -> torch.Tensor:
        """Bool ``[B or 1, H or 1, q_len]``: True where a query row may attend to no key at all."""
        return ~self.dense(q_len, k_len, device).any(dim=-1)


def _positions(q_len: int, k_len: int, device: torch.device):
    if q_len < 0 or k_len < 0:
        raise ValueError(f"mask sizes must be non-negative, got q_len={q_len}, k_len={k_len}")
    if q_len > k_len:
        raise ValueError(f"q_len ({q_len}) > k_len ({k_len}): queries must be the last keys' positions")
    past = k_len - q_len
    q_idx = torch.arange(past, k_len, device=device).view(1, 1, q_len, 1)  # (1, 1, Sq, 1) absolute
    kv_idx = torch.arange(k_len, device=device).view(1, 1, 1, k_len)  # (1, 1, 1, Sk)
    b = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    return b, b, q_idx, kv_idx


@functools.lru_cache(maxsize=256)
def _dense_cached(spec: MaskSpec, q_len: int, k_len: int, device: str) -> torch.Tensor:
    b, h, q_idx, kv_idx = _positions(q_len, k_len, torch.device(device))
    allowed = spec.predicate(b, h, q_idx, kv_idx)
    return torch.broadcast_to(allowed, (*allowed.shape[:2], q_len, k_len))


def cache_info():
    """Hit/miss counters of the dense-mask cache (`functools` CacheInfo)."""
    return _dense_cached.cache_info()


@dataclass(frozen=True)
class Causal(MaskSpec):
    """Query at absolute position p sees keys 0..p."""

    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def __repr__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class SlidingWindow(MaskSpec):
    """Query at absolute position p sees keys in (p - window, p] (HF / Mistral semantics)."""

    window: int

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"sliding window must be >= 1, got {self.window}")

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)

    def __repr__(self) -> str:
        return f"sliding_window({self.window})"


@dataclass(frozen=True)
class And(MaskSpec):
    left: MaskSpec
    right: MaskSpec

    def predicate(self, b, h, q_idx, kv_idx):
        return self.left.predicate(b, h, q_idx, kv_idx) & self.right.predicate(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"{_group(self.left, Or)} & {_group(self.right, Or)}"


@dataclass(frozen=True)
class Or(MaskSpec):
    left: MaskSpec
    right: MaskSpec

    def predicate(self, b, h, q_idx, kv_idx):
        return self.left.predicate(b, h, q_idx, kv_idx) | self.right.predicate(b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"{_group(self.left, And)} | {_group(self.right, And)}"


def _group(spec: MaskSpec, other_op: type) -> str:
    return f"({spec!r})" if isinstance(spec, other_op) else repr(spec)


def causal() -> MaskSpec:
    """Causal mask, bottom-right aligned for a KV cache."""
    return Causal()


def sliding_window(window: int) -> MaskSpec:
    """Causal sliding window: position p sees keys in (p - window, p]."""
    return SlidingWindow(window)
