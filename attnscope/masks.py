"""Attention masks as composable predicates.

A mask is a predicate ``(b, h, q_idx, kv_idx) -> bool`` (True = may attend), the convention of
FlexAttention's ``mask_mod`` and HF transformers' ``masking_utils``. Predicates are evaluated
vectorized on broadcast index tensors and always see *absolute* positions: with ``Sk = past + Sq``
keys, query row ``i`` has position ``past + i`` (bottom-right alignment, torch's
``causal_lower_right``). That is what KV-cache decoding needs: the new token at position ``past``
sees every cached key and itself. (FlexAttention passes q_idx relative to the first query;
`MaskSpec.mask_mod` adapts a spec to that convention.)

Named parts, combined with ``&`` and ``|``, each with a readable ``repr``
("causal & sliding_window(4096) & padding(left)"):

    causal()                 key <= query
    sliding_window(w)        keys in (query - w, query]          (causal included, HF/Mistral semantics)
    padding(lengths, side)   only the real tokens of each batch row as keys (right or left padded)
    prefix_lm(n)             bidirectional over the first n tokens, causal after
    document(ids)            only keys of the same document (packed sequences); & with causal()
    chunked(size)            only keys of the same chunk of `size` positions; & with causal()
    custom(bool_tensor)      an explicit [.., Nq, Nk] tensor, bottom-right aligned like the rest

Views of one spec: `dense` (bool ``[B or 1, H or 1, Sq, Sk]``), `additive` (0 / finfo.min),
`blocks` (tile map full / partial / empty for a BLOCK_M × BLOCK_N grid) and `fully_masked_rows`.

Dense masks are cached. Because predicates see absolute positions, the mask of (Sq, Sk) is the
block ``[Sk - Sq : Sk, :Sk]`` of one square mask over positions ``0 .. C-1`` for any C >= Sk. The
cache keeps that square mask for C a power of two, so a whole generation (Sk growing by one each
step) is served by one or two materializations; `cache_stats` reports hits and misses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

# Square masks above this many elements (B·H·C²) are not cached as a square; the exact block is.
MAX_SQUARE_ELEMENTS = 1 << 26
MIN_SQUARE = 64
EMPTY, PARTIAL, FULL = 0, 1, 2  # tile states of `blocks`


class MaskSpec:
    """Base class of mask specs: frozen dataclasses that implement `predicate` and `__repr__`."""

    # Positions the spec is defined for (the length of its ids / lengths / tensor), None = any.
    max_len: int | None = None

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

    def mask_mod(self, q_len: int, k_len: int):
        """This spec as a FlexAttention ``mask_mod`` for the last `q_len` of `k_len` positions: called
        with scalar indices (FlexAttention vmaps it), q_idx counting from the first query. A spec with
        its own batch (or head) dimension (padding, documents or a tensor per row) answers for row b
        (head h)."""
        past = k_len - q_len

        def mask_mod(b, h, q_idx, kv_idx):
            allowed = self.predicate(b, h, q_idx + past, kv_idx)  # () or (B|1, H|1, 1, 1)
            if allowed.dim() == 0:
                return allowed
            rows, heads = allowed.shape[0], allowed.shape[1]
            return allowed.reshape(rows, heads)[b if rows > 1 else 0, h if heads > 1 else 0]

        return mask_mod

    def dense(self, q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask ``[B or 1, H or 1, q_len, k_len]``; the queries are the last `q_len` positions.

        Args:
            q_len: number of query rows (new tokens), 0 allowed.
            k_len: number of keys, cache included; must be >= q_len.
            device: where the tensor lives.

        Returns:
            A cached tensor (often a view): treat it as read-only.
        """
        _check_sizes(q_len, k_len)
        if self.max_len is not None and k_len > self.max_len:
            raise ValueError(f"{self!r} covers {self.max_len} positions, the mask needs {k_len}")
        device = str(torch.device(device or "cpu"))
        size = max(MIN_SQUARE, 1 << max(0, k_len - 1).bit_length())
        if self.max_len is not None:
            size = min(size, self.max_len)
        if size * size * self.batch_heads <= MAX_SQUARE_ELEMENTS:
            square = _materialize(self, size, size, device)
            return square[..., k_len - q_len:k_len, :k_len]
        return _materialize(self, q_len, k_len, device)

    @property
    def batch_heads(self) -> int:
        """How many distinct (batch, head) masks the spec has (1 unless it depends on them)."""
        return 1

    def additive(
        self, q_len: int, k_len: int, dtype: torch.dtype = torch.float32, device=None
    ) -> torch.Tensor:
        """Additive form ``[B or 1, H or 1, Sq, Sk]``: 0 where allowed, ``torch.finfo(dtype).min`` where masked.

        Why the finite minimum and not -inf: with -inf, a row whose every key is masked computes
        exp(-inf - (-inf)) = NaN in softmax; with finfo.min the row stays finite and can be found
        and zeroed. Why not -1e9: it is outside float16's range (max 65504) and becomes -inf there,
        which brings the NaN back. attnscope's own backends do not add masks: they select with
        ``torch.where`` / ``masked_fill`` and handle fully-masked rows explicitly.
        """
        return _additive(self, q_len, k_len, dtype, str(torch.device(device or "cpu")))

    def fully_masked_rows(self, q_len: int, k_len: int, device=None) -> torch.Tensor:
        """Bool ``[B or 1, H or 1, q_len]``: True where a query row may attend to no key at all."""
        return ~self.dense(q_len, k_len, device).any(dim=-1)

    def blocks(self, q_len: int, k_len: int, block_m: int = 64, block_n: int = 64, device=None) -> BlockMap:
        """The tile map of a ``block_m × block_n`` grid: each tile full, partial or empty."""
        if block_m < 1 or block_n < 1:
            raise ValueError(f"block sizes must be >= 1, got {block_m}x{block_n}")
        allowed = self.dense(q_len, k_len, device)  # (B|1, H|1, Sq, Sk)
        rows, cols = -(-q_len // block_m), -(-k_len // block_n)
        padded = allowed.new_zeros(*allowed.shape[:2], rows * block_m, cols * block_n)
        padded[..., :q_len, :k_len] = allowed
        inside = torch.zeros_like(padded)
        inside[..., :q_len, :k_len] = True
        tiles = padded.view(*allowed.shape[:2], rows, block_m, cols, block_n)
        inside_tiles = inside.view(*allowed.shape[:2], rows, block_m, cols, block_n)
        count = tiles.sum(dim=(3, 5))  # allowed cells per tile
        cells = inside_tiles.sum(dim=(3, 5))  # real (unpadded) cells per tile
        states = torch.full_like(count, PARTIAL, dtype=torch.int8)
        states[count == 0] = EMPTY
        states[count == cells] = FULL
        return BlockMap(states, block_m, block_n)


@dataclass(frozen=True)
class BlockMap:
    """Tile states ``[B or 1, H or 1, ceil(Sq / block_m), ceil(Sk / block_n)]``: EMPTY, PARTIAL or FULL."""

    states: torch.Tensor = field(repr=False)
    block_m: int
    block_n: int

    @property
    def sparsity(self) -> float:
        """Fraction of tiles that are empty: work a block-sparse kernel skips."""
        return float((self.states == EMPTY).float().mean()) if self.states.numel() else 0.0


def _check_sizes(q_len: int, k_len: int) -> None:
    if q_len < 0 or k_len < 0:
        raise ValueError(f"mask sizes must be non-negative, got q_len={q_len}, k_len={k_len}")
    if q_len > k_len:
        raise ValueError(f"q_len ({q_len}) > k_len ({k_len}): the queries are the last q_len of the k_len "
                         "positions, so there cannot be more queries than keys")


@functools.lru_cache(maxsize=128)
def _materialize(spec: MaskSpec, q_len: int, k_len: int, device: str) -> torch.Tensor:
    """Evaluate the predicate for the last q_len of k_len positions: bool [B|1, H|1, q_len, k_len]."""
    dev = torch.device(device)
    past = k_len - q_len
    q_idx = torch.arange(past, k_len, device=dev).view(1, 1, q_len, 1)  # (1, 1, Sq, 1) absolute
    kv_idx = torch.arange(k_len, device=dev).view(1, 1, 1, k_len)  # (1, 1, 1, Sk)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
    allowed = spec.predicate(zero, zero, q_idx, kv_idx)
    if allowed.dim() != 4:
        raise ValueError(f"{spec!r}: predicate returned shape {tuple(allowed.shape)}, expected 4 dims")
    return torch.broadcast_to(allowed, (*allowed.shape[:2], q_len, k_len))


@functools.lru_cache(maxsize=32)
def _additive(spec: MaskSpec, q_len: int, k_len: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    allowed = spec.dense(q_len, k_len, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def cache_stats() -> dict[str, int]:
    """Hits and misses of the dense-mask cache since the process started (or `cache_clear`)."""
    info = _materialize.cache_info()
    return {"hits": info.hits, "misses": info.misses, "size": info.currsize, "maxsize": info.maxsize}


def cache_clear() -> None:
    _materialize.cache_clear()
    _additive.cache_clear()


# ----------------------------------------------------------------------------------------------
# Named parts


@dataclass(frozen=True)
class Causal(MaskSpec):
    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def __repr__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class SlidingWindow(MaskSpec):
    window: int

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"sliding window must be >= 1, got {self.window}")

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx > q_idx - self.window)

    def __repr__(self) -> str:
        return f"sliding_window({self.window})"


@dataclass(frozen=True)
class Padding(MaskSpec):
    lengths: tuple[int, ...]  # real tokens of each batch row
    side: str  # "right" or "left"
    total: int  # padded prompt length; positions >= total (generated tokens) are real in every row

    def __post_init__(self):
        if self.side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', got {self.side!r}")
        if not self.lengths or min(self.lengths) < 0 or max(self.lengths) > self.total:
            raise ValueError(f"padding lengths {list(self.lengths)} must be within 0..{self.total}")

    @property
    def batch_heads(self) -> int:
        return len(self.lengths)

    def predicate(self, b, h, q_idx, kv_idx):
        lengths = torch.tensor(self.lengths, device=kv_idx.device).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        generated = kv_idx >= self.total
        if self.side == "right":
            return (kv_idx < lengths) | generated
        return (kv_idx >= self.total - lengths) | generated

    def __repr__(self) -> str:
        return f"padding({self.side})"


@dataclass(frozen=True)
class PrefixLM(MaskSpec):
    prefix: int

    def __post_init__(self):
        if self.prefix < 0:
            raise ValueError(f"prefix length must be >= 0, got {self.prefix}")

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < self.prefix)

    def __repr__(self) -> str:
        return f"prefix_lm({self.prefix})"


@dataclass(frozen=True)
class Document(MaskSpec):
    ids: tuple[tuple[int, ...], ...]  # per batch row (or one row for all), the document id of each position

    @property
    def max_len(self) -> int:
        return len(self.ids[0])

    @property
    def batch_heads(self) -> int:
        return len(self.ids)

    def predicate(self, b, h, q_idx, kv_idx):
        ids = torch.tensor(self.ids, device=kv_idx.device)  # (B, N)
        q_doc = ids[:, q_idx.reshape(-1).clamp(max=self.max_len - 1)]  # (B, Sq)
        kv_doc = ids[:, kv_idx.reshape(-1)]  # (B, Sk)
        return (q_doc[:, None, :, None] == kv_doc[:, None, None, :])  # (B, 1, Sq, Sk)

    def __repr__(self) -> str:
        return f"document({len(set(i for row in self.ids for i in row))} docs)"


@dataclass(frozen=True)
class Chunked(MaskSpec):
    size: int

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"chunk size must be >= 1, got {self.size}")

    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx // self.size == q_idx // self.size

    def __repr__(self) -> str:
        return f"chunked({self.size})"


@dataclass(frozen=True, eq=False)
class Custom(MaskSpec):
    """An explicit boolean tensor ``[Nq, Nk]`` or ``[B|1, H|1, Nq, Nk]``, bottom-right aligned:
    its row r is absolute position ``Nk - Nq + r``. Positions before its first row are masked.
    Compared and hashed by identity."""

    tensor: torch.Tensor = field(repr=False)
    name: str = "custom"

    def __post_init__(self):
        t = self.tensor
        if t.dtype != torch.bool or t.dim() not in (2, 4) or t.shape[-2] > t.shape[-1]:
            raise ValueError("custom mask must be a bool tensor [Nq, Nk] or [B, H, Nq, Nk] with Nq <= Nk, "
                             f"got {t.dtype} {tuple(t.shape)}")
        if t.dim() == 2:
            object.__setattr__(self, "tensor", t[None, None])

    @property
    def max_len(self) -> int:
        return self.tensor.shape[-1]

    @property
    def batch_heads(self) -> int:
        return self.tensor.shape[0] * self.tensor.shape[1]

    def predicate(self, b, h, q_idx, kv_idx):
        t = self.tensor.to(kv_idx.device)
        first = t.shape[-1] - t.shape[-2]  # absolute position of row 0
        rows = q_idx.reshape(-1) - first  # (Sq,)
        valid = rows >= 0
        picked = t[..., rows.clamp(min=0), :][..., kv_idx.reshape(-1)]  # (B|1, H|1, Sq, Sk)
        return picked & valid.view(1, 1, -1, 1)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class And(MaskSpec):
    left: MaskSpec
    right: MaskSpec

    def predicate(self, b, h, q_idx, kv_idx):
        return self.left.predicate(b, h, q_idx, kv_idx) & self.right.predicate(b, h, q_idx, kv_idx)

    @property
    def max_len(self) -> int | None:
        return _min_len(self.left.max_len, self.right.max_len)

    @property
    def batch_heads(self) -> int:
        return max(self.left.batch_heads, self.right.batch_heads)

    def __repr__(self) -> str:
        return f"{_group(self.left, Or)} & {_group(self.right, Or)}"


@dataclass(frozen=True)
class Or(MaskSpec):
    left: MaskSpec
    right: MaskSpec

    def predicate(self, b, h, q_idx, kv_idx):
        return self.left.predicate(b, h, q_idx, kv_idx) | self.right.predicate(b, h, q_idx, kv_idx)

    @property
    def max_len(self) -> int | None:
        return _min_len(self.left.max_len, self.right.max_len)

    @property
    def batch_heads(self) -> int:
        return max(self.left.batch_heads, self.right.batch_heads)

    def __repr__(self) -> str:
        return f"{_group(self.left, And)} | {_group(self.right, And)}"


def _min_len(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _group(spec: MaskSpec, other_op: type) -> str:
    return f"({spec!r})" if isinstance(spec, other_op) else repr(spec)


# ----------------------------------------------------------------------------------------------
# Constructors


def causal() -> MaskSpec:
    """Causal mask, bottom-right aligned for a KV cache: position p sees keys 0..p."""
    return Causal()


def sliding_window(window: int) -> MaskSpec:
    """Causal sliding window: position p sees keys in (p - window, p]."""
    return SlidingWindow(int(window))


def padding(lengths, side: str = "right", total: int | None = None) -> MaskSpec:
    """Keys restricted to each batch row's real tokens.

    Args:
        lengths: real-token count of each batch row.
        side: "right" (real tokens first) or "left" (padding first).
        total: padded prompt length (default: the longest row). Positions from `total` on are tokens
            generated after the prompt, real in every row.
    """
    lengths = tuple(int(n) for n in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths))
    return Padding(lengths, side, int(total if total is not None else max(lengths, default=0)))


def prefix_lm(prefix: int) -> MaskSpec:
    """Bidirectional over the first `prefix` positions, causal after."""
    return PrefixLM(int(prefix))


def document(ids) -> MaskSpec:
    """Packed sequences: a position sees only keys with the same document id.

    Args:
        ids: document id per position, ``[N]`` (every batch row) or ``[B, N]``. Combine with
            `causal()`: ``causal() & document(ids)``.
    """
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    rows = [ids] if not ids or not isinstance(ids[0], (list, tuple)) else ids
    rows = tuple(tuple(int(i) for i in row) for row in rows)
    if not rows[0] or len({len(r) for r in rows}) != 1:
        raise ValueError("document ids must be a non-empty [N] or [B, N] list")
    return Document(rows)


def chunked(size: int) -> MaskSpec:
    """A position sees only keys of its own chunk of `size` positions; combine with `causal()`."""
    return Chunked(int(size))


def custom(tensor: torch.Tensor, name: str = "custom") -> MaskSpec:
    """An explicit boolean mask ``[Nq, Nk]`` or ``[B, H, Nq, Nk]`` (True = may attend)."""
    return Custom(tensor, name)


# ----------------------------------------------------------------------------------------------
# Building a mask from named parts (what `attnscope mask` draws), and its summary


def from_parts(k_len: int, *, window: int | None = None, padding_count: int = 0, side: str = "right",
               prefix: int | None = None, documents: list[int] | None = None,
               chunk: int | None = None) -> MaskSpec:
    """The spec of a sequence of `k_len` positions: causal (or prefix-LM over the first `prefix`),
    & a sliding `window`, & `padding_count` padding positions on `side`, & `documents` (one id per
    position), & chunks of `chunk` positions. Raises ValueError naming a part that does not fit."""
    if window is not None and window < 1:
        raise ValueError(f"--window must be >= 1, got {window}")
    if side not in ("left", "right"):
        raise ValueError(f"--side must be left or right, got {side!r}")
    if not 0 <= padding_count <= k_len:
        raise ValueError(f"--padding {padding_count} must be within 0..{k_len} (the sequence has {k_len} positions)")
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    if prefix is not None and not 0 <= prefix <= k_len:
        raise ValueError(f"--prefix {prefix} must be within 0..{k_len}")
    if documents is not None and len(documents) != k_len:
        raise ValueError(f"--documents has {len(documents)} ids for {k_len} positions (--k-len)")
    spec = prefix_lm(prefix) if prefix is not None else causal()
    if window is not None:
        spec = spec & sliding_window(window)
    if padding_count:
        spec = spec & padding([k_len - padding_count], side, total=k_len)
    if documents is not None:
        spec = spec & document(documents)
    if chunk is not None:
        spec = spec & chunked(chunk)
    return spec


def summary(spec: MaskSpec, q_len: int, k_len: int, block: tuple[int, int] | None = None) -> dict:
    """What a script wants to know of a mask: its spec, shape, allowed and masked counts, density,
    the absolute positions of rows with no allowed key and, with `block`, the tile counts."""
    allowed = spec.dense(q_len, k_len)[0, 0]  # (Sq, Sk)
    past = k_len - q_len
    empty = spec.fully_masked_rows(q_len, k_len)[0, 0].nonzero().flatten()
    out = {"spec": repr(spec), "q_len": q_len, "k_len": k_len, "past": past,
           "allowed": int(allowed.sum()), "masked": int((~allowed).sum()),
           "density": float(allowed.float().mean()) if allowed.numel() else 0.0,
           "fully_masked_rows": [int(i) + past for i in empty]}
    if block is not None:
        tiles = spec.blocks(q_len, k_len, *block)
        states = tiles.states[0, 0]
        out["blocks"] = {"block_m": block[0], "block_n": block[1], "shape": list(states.shape),
                         "full": int((states == FULL).sum()), "partial": int((states == PARTIAL).sum()),
                         "empty": int((states == EMPTY).sum()), "sparsity": tiles.sparsity}
    return out
