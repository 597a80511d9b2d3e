"""Attention masks as composable predicates.

A mask is a predicate ``(b, h, q_idx, kv_idx) -> bool`` (True = may attend), the convention of
FlexAttention's ``mask_mod`` and HF transformers' ``masking_utils``. Predicates are evaluated
vectorized on broadcast index tensors and always see *absolute* positions: with ``Sk = past + Sq``
keys, query row ``i`` has position ``past + i`` (bottom-right alignment, torch's
``causal_lower_right``). That is what KV-cache decoding needs: the new token at position ``past``
sees every cached key and itself. (FlexAttention passes q_idx relative to the first query;
`MaskSpec.mask_mod` adapts a spec to that convention.)

Named parts, combined with ``&`` and ``|``, each with a readable ``repr``
("causal & sliding_window(4096) & padding(left, 3)"):

    causal()                 key <= query
    sliding_window(w)        keys in (query - w, query]          (causal included, HF/Mistral semantics)
    padding(lengths, side)   only the real tokens of each batch row as keys (right or left padded)
    prefix_lm(n)             bidirectional over the first n tokens, causal after
    document(ids)            only keys of the same document (packed sequences); & with causal()
    chunked(size)            only keys of the same chunk of `size` positions; & with causal()
    custom(bool_tensor)      an explicit [.., Nq, Nk] tensor, bottom-right aligned like the rest

Views of one spec: `dense` (bool ``[B or 1, H or 1, Sq, Sk]``), `additive` (0 / finfo.min),
`blocks` (tile map full / partial / empty for a BLOCK_M × BLOCK_N grid) and `fully_masked_rows`.

Masks of any size are summarized without their dense form (`scan`, `summary`): `region_counts`
counts the allowed cells of every rectangle of a grid. Where each query row's keys are one interval
(every named part but recurring document ids and custom tensors gives that; `row_intervals`), the
counts come from the intervals' prefix sums, O(rows · log rows + rectangles); otherwise the
predicate is evaluated in chunks of rows, up to `MAX_SCAN_CELLS` cells.

Dense masks are cached. Because predicates see absolute positions, the mask of (Sq, Sk) is the
block ``[Sk - Sq : Sk, :Sk]`` of one square mask over positions ``0 .. C-1`` for any C >= Sk. The
cache keeps that square mask for C a power of two, so a whole generation (Sk growing by one each
step) is served by one or two materializations; `cache_stats` reports hits and misses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from attnscope.errors import ArgumentError
from attnscope.pooling import pool_edges

# Square masks above this many elements (B·H·C²) are not cached as a square; the exact block is.
MAX_SQUARE_ELEMENTS = 1 << 26
MIN_SQUARE = 64
EMPTY, PARTIAL, FULL = 0, 1, 2  # tile states of `blocks`
POSITION_LIMIT = 1 << 62  # positions are int64: a window, chunk or prefix beyond this acts as this
MAX_SCAN_LEN = 1 << 40  # keys of a mask summary (its counts stay inside int64)
MAX_SCAN_ROWS = 1 << 22  # query rows of a mask summary
MAX_SCAN_CELLS = 1 << 27  # cells evaluated one by one, for a mask whose rows are not intervals
MAX_TILES = 1 << 22  # tiles of a block map
_CHUNK_CELLS = 1 << 22  # cells evaluated at once


class MaskSpec:
    """Base class of mask specs: frozen dataclasses that implement `predicate` and `__repr__`."""

    @property
    def max_len(self) -> int | None:
        """Positions the spec is defined for (the length of its ids / lengths / tensor), None = any."""
        return None

    def predicate(self, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, b, h, q_idx, kv_idx):
        return self.predicate(b, h, q_idx, kv_idx)

    def row_intervals(self, q_pos: torch.Tensor, k_len: int, batch: int = 0):
        """When the keys that each query position in `q_pos` (absolute, int64 ``[R]``) may attend
        form one interval: ``(lo, hi)`` int64 ``[R]``, the keys ``lo <= kv < hi`` (not clipped to
        ``0..k_len``; empty when hi <= lo); None when they may not. Must agree with `predicate`."""
        return None

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
        _validate_sizes(q_len, k_len)
        if self.max_len is not None and k_len > self.max_len:
            raise ValueError(f"{self!r} covers {self.max_len} positions, the mask needs {k_len}")
        device = str(torch.device(device or "cpu"))
        size = max(MIN_SQUARE, 1 << max(0, k_len - 1).bit_length())
        if self.max_len is not None:
            size = min(size, self.max_len)
        if size * size * self.batch_heads <= MAX_SQUARE_ELEMENTS:
            square = _materialize(self, size, size, device)
            return square[..., k_len - q_len : k_len, :k_len]
        return _materialize(self, q_len, k_len, device)

    @property
    def batch_heads(self) -> int:
        """How many distinct (batch, head) masks the spec has (1 unless it depends on them)."""
        return 1

    def additive(self, q_len: int, k_len: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
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
        """The tile map of a ``block_m × block_n`` grid: each tile full, partial or empty (any size
        that `validate_scan` accepts)."""
        validate_scan(self, q_len, k_len, (block_m, block_n))
        n_batch, n_heads = _evaluate(self, max(0, k_len - 1), min(1, q_len), k_len, "cpu").shape[:2]
        states = torch.stack(
            [
                torch.stack(
                    [tile_states(self, q_len, k_len, (block_m, block_n), batch=b, head=h) for h in range(n_heads)]
                )
                for b in range(n_batch)
            ]
        )
        return BlockMap(states.to(device or "cpu"), block_m, block_n)


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


def _validate_sizes(q_len: int, k_len: int) -> None:
    if q_len < 0 or k_len < 0:
        raise ValueError(f"mask sizes must be non-negative, got q_len={q_len}, k_len={k_len}")
    if q_len > k_len:
        raise ValueError(
            f"q_len ({q_len}) > k_len ({k_len}): the queries are the last q_len of the k_len "
            "positions, so there cannot be more queries than keys"
        )


@functools.lru_cache(maxsize=128)
def _materialize(spec: MaskSpec, q_len: int, k_len: int, device: str) -> torch.Tensor:
    """The last q_len of k_len positions: bool [B|1, H|1, q_len, k_len] (cached)."""
    return _evaluate(spec, k_len - q_len, q_len, k_len, device)


def _evaluate(spec: MaskSpec, first: int, n_rows: int, k_len: int, device: str) -> torch.Tensor:
    """The predicate for query positions first .. first + n_rows - 1 over k_len keys:
    bool [B|1, H|1, n_rows, k_len]."""
    dev = torch.device(device)
    q_idx = torch.arange(first, first + n_rows, device=dev).view(1, 1, n_rows, 1)  # (1, 1, R, 1) absolute
    kv_idx = torch.arange(k_len, device=dev).view(1, 1, 1, k_len)  # (1, 1, 1, Sk)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
    allowed = spec.predicate(zero, zero, q_idx, kv_idx)
    if allowed.dim() != 4:
        raise ValueError(f"{spec!r}: predicate returned shape {tuple(allowed.shape)}, expected 4 dims")
    return torch.broadcast_to(allowed, (*allowed.shape[:2], n_rows, k_len))


@functools.lru_cache(maxsize=32)
def _additive(spec: MaskSpec, q_len: int, k_len: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    allowed = spec.dense(q_len, k_len, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def cache_stats() -> dict[str, int]:
    """Hits and misses of the dense-mask cache since the process started (or `cache_clear`)."""
    info = _materialize.cache_info()
    return {"hits": info.hits, "misses": info.misses, "size": info.currsize, "maxsize": info.maxsize or 0}


def cache_clear() -> None:
    _materialize.cache_clear()
    _additive.cache_clear()


# ----------------------------------------------------------------------------------------------
# Named parts


@dataclass(frozen=True)
class Causal(MaskSpec):
    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def row_intervals(self, q_pos, k_len, batch=0):
        return torch.zeros_like(q_pos), q_pos + 1

    def __repr__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class SlidingWindow(MaskSpec):
    window: int

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"sliding window must be >= 1, got {self.window}")

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (kv_idx > q_idx - min(self.window, POSITION_LIMIT))

    def row_intervals(self, q_pos, k_len, batch=0):
        return q_pos - min(self.window, POSITION_LIMIT) + 1, q_pos + 1

    def __repr__(self) -> str:
        return f"sliding_window({self.window})"


@dataclass(frozen=True)
class HiddenKeys(MaskSpec):
    """Every key but ``lo <= key < hi``: combined with a model's mask (``&``), it hides a range of keys
    from every query (an intervention: what does a head read there?)."""

    lo: int
    hi: int

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx < self.lo) | (kv_idx >= self.hi)

    def __repr__(self) -> str:
        return f"hide_keys({self.lo}:{self.hi})"


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

    def row_intervals(self, q_pos, k_len, batch=0):
        length = self.lengths[min(batch, len(self.lengths) - 1)]
        if self.side == "left":  # the generated positions follow the real tokens
            return torch.full_like(q_pos, self.total - length), torch.full_like(q_pos, max(k_len, self.total))
        if length >= self.total:  # no padding: every key
            return torch.zeros_like(q_pos), torch.full_like(q_pos, max(k_len, self.total))
        if k_len > self.total:
            return None  # right padding between the prompt and the generated tokens: two intervals
        return torch.zeros_like(q_pos), torch.full_like(q_pos, length)

    def __repr__(self) -> str:
        """The side and the padded positions (of each row of a batch): "padding(left, 3)", "padding(left, [0, 3])"."""
        pads = [self.total - n for n in self.lengths]
        return f"padding({self.side}, {pads[0] if len(pads) == 1 else pads})"


@dataclass(frozen=True)
class PrefixLM(MaskSpec):
    prefix: int

    def __post_init__(self):
        if self.prefix < 0:
            raise ValueError(f"prefix length must be >= 0, got {self.prefix}")

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) | (kv_idx < min(self.prefix, POSITION_LIMIT))

    def row_intervals(self, q_pos, k_len, batch=0):
        return torch.zeros_like(q_pos), torch.clamp(q_pos + 1, min=min(self.prefix, POSITION_LIMIT))

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
        return q_doc[:, None, :, None] == kv_doc[:, None, None, :]  # (B, 1, Sq, Sk)

    def row_intervals(self, q_pos, k_len, batch=0):
        ids = self.ids[min(batch, len(self.ids) - 1)]
        starts = [0] + [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]  # where each run begins
        if len(starts) != len(set(ids)):
            return None  # a document id recurs: its keys are not one interval
        first = torch.tensor(starts)  # (runs,)
        length = torch.diff(torch.tensor([*starts, len(ids)]))  # (runs,)
        row = q_pos.clamp(max=len(ids) - 1)
        return first.repeat_interleave(length)[row], (first + length).repeat_interleave(length)[row]

    def __repr__(self) -> str:
        return f"document({len(set(i for row in self.ids for i in row))} docs)"


@dataclass(frozen=True)
class Chunked(MaskSpec):
    size: int

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"chunk size must be >= 1, got {self.size}")

    def predicate(self, b, h, q_idx, kv_idx):
        size = min(self.size, POSITION_LIMIT)
        return kv_idx // size == q_idx // size

    def row_intervals(self, q_pos, k_len, batch=0):
        size = min(self.size, POSITION_LIMIT)
        start = q_pos // size * size
        return start, start + size

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
            raise ValueError(
                "custom mask must be a bool tensor [Nq, Nk] or [B, H, Nq, Nk] with Nq <= Nk, "
                f"got {t.dtype} {tuple(t.shape)}"
            )
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

    def row_intervals(self, q_pos, k_len, batch=0):
        left = self.left.row_intervals(q_pos, k_len, batch)
        right = None if left is None else self.right.row_intervals(q_pos, k_len, batch)
        if right is None:
            return None
        return torch.maximum(left[0], right[0]), torch.minimum(left[1], right[1])

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
    if any(not -(1 << 63) <= i < 1 << 63 for row in rows for i in row):
        raise ValueError("document ids must fit in 64 bits")
    return Document(rows)


def chunked(size: int) -> MaskSpec:
    """A position sees only keys of its own chunk of `size` positions; combine with `causal()`."""
    return Chunked(int(size))


def custom(tensor: torch.Tensor, name: str = "custom") -> MaskSpec:
    """An explicit boolean mask ``[Nq, Nk]`` or ``[B, H, Nq, Nk]`` (True = may attend)."""
    return Custom(tensor, name)


# ----------------------------------------------------------------------------------------------
# Building a mask from named parts (what `attnscope mask` draws), and its summary


def from_parts(
    k_len: int,
    *,
    window: int | None = None,
    padding_count: int = 0,
    side: str = "right",
    prefix: int | None = None,
    documents: list[int] | None = None,
    chunk: int | None = None,
) -> MaskSpec:
    """The spec of a sequence of `k_len` positions: causal (or prefix-LM over the first `prefix`),
    & a sliding `window`, & `padding_count` padding positions on `side`, & `documents` (one id per
    position), & chunks of `chunk` positions. Raises `ArgumentError` (a ValueError) naming a part that
    does not fit."""
    if window is not None and window < 1:
        raise ArgumentError("window", f"must be >= 1, got {window}")
    if side not in ("left", "right"):
        raise ArgumentError("side", f"must be left or right, got {side!r}")
    if not 0 <= padding_count <= k_len:
        raise ArgumentError(
            "padding_count", f"{padding_count} must be within 0..{k_len} (the sequence has {k_len} positions)"
        )
    if chunk is not None and chunk < 1:
        raise ArgumentError("chunk", f"must be >= 1, got {chunk}")
    if prefix is not None and not 0 <= prefix <= k_len:
        raise ArgumentError("prefix", f"{prefix} must be within 0..{k_len}")
    if documents is not None and len(documents) != k_len:
        raise ArgumentError("documents", f"has {len(documents)} ids for {k_len} positions")
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
    the absolute positions of rows with no allowed key and, with `block`, the tile counts. Any size
    `scan` reads, without the dense mask."""
    found = scan(spec, q_len, k_len, block=block)
    cells, past = q_len * k_len, k_len - q_len
    out = {
        "spec": repr(spec),
        "q_len": q_len,
        "k_len": k_len,
        "past": past,
        "allowed": found.allowed,
        "masked": cells - found.allowed,
        "density": found.allowed / cells if cells else 0.0,
        "fully_masked_rows": [int(i) + past for i in found.empty_rows],
    }
    if found.tiles is not None and block is not None:
        states = found.tiles
        out["blocks"] = {
            "block_m": block[0],
            "block_n": block[1],
            "shape": list(states.shape),
            "full": int((states == FULL).sum()),
            "partial": int((states == PARTIAL).sum()),
            "empty": int((states == EMPTY).sum()),
            "sparsity": found.sparsity,
        }
    return out


# ----------------------------------------------------------------------------------------------
# Masks of any size, summarized without the dense mask


@dataclass(frozen=True)
class MaskScan:
    """A q_len × k_len mask summarized (one batch row and head): allowed keys per query row, allowed
    cells per bin of a grid (`row_edges` × `col_edges`, as `pooling.pool_edges` gives them) and, for
    a block grid, each tile's state."""

    q_len: int
    k_len: int
    row_allowed: torch.Tensor = field(repr=False)  # (q_len,) allowed keys of each query row
    grid: torch.Tensor = field(repr=False)  # (rows, cols) allowed cells of each bin
    row_edges: torch.Tensor = field(repr=False)  # (rows + 1,) bin i covers query rows [e[i], e[i + 1])
    col_edges: torch.Tensor = field(repr=False)  # (cols + 1,)
    tiles: torch.Tensor | None = field(default=None, repr=False)  # (ceil(q/bm), ceil(k/bn)) EMPTY..FULL
    block: tuple[int, int] | None = None

    @property
    def allowed(self) -> int:
        return int(self.row_allowed.sum())

    @property
    def empty_rows(self) -> torch.Tensor:
        """Query rows (from 0) with no allowed key."""
        return (self.row_allowed == 0).nonzero().flatten()

    @property
    def grid_cells(self) -> torch.Tensor:
        """(rows, cols) cells in each bin of the grid."""
        return torch.outer(torch.diff(self.row_edges), torch.diff(self.col_edges))

    @property
    def sparsity(self) -> float:
        """Fraction of tiles that are empty: work a block-sparse kernel skips."""
        if self.tiles is None or not self.tiles.numel():
            return 0.0
        return int((self.tiles == EMPTY).sum()) / self.tiles.numel()


def scan(
    spec: MaskSpec,
    q_len: int,
    k_len: int,
    *,
    rows: int = 1,
    cols: int = 1,
    block: tuple[int, int] | None = None,
    batch: int = 0,
    head: int = 0,
) -> MaskScan:
    """Summarize a mask of any size that `validate_scan` accepts, never materializing it.

    Args:
        spec: the mask; its queries are the last `q_len` of `k_len` positions.
        rows, cols: the grid of bins (at most rows × cols, nearly equal) whose allowed cells are counted.
        block: (block_m, block_n) for tile states, or None.
        batch, head: which of a per-batch or per-head spec's masks.
    """
    validate_scan(spec, q_len, k_len, block, batch)
    grids = [
        (torch.arange(q_len + 1), torch.tensor([0, k_len])),
        (torch.from_numpy(pool_edges(q_len, rows)), torch.from_numpy(pool_edges(k_len, cols))),
    ]
    if block is not None:
        grids.append((_tile_edges(q_len, block[0]), _tile_edges(k_len, block[1])))
    counts = region_counts(spec, q_len, k_len, grids, batch=batch, head=head)
    tiles = None if block is None else _tile_states(counts[2], *grids[2])
    return MaskScan(q_len, k_len, counts[0][:, 0], counts[1], *grids[1], tiles, block)


def validate_scan(spec: MaskSpec, q_len: int, k_len: int, block: tuple[int, int] | None = None, batch: int = 0) -> None:
    """Raise ValueError, with the sizes, for a mask larger than `scan` reads: more than
    `MAX_SCAN_LEN` keys or `MAX_SCAN_ROWS` query rows; more than `MAX_SCAN_CELLS` cells when its
    rows are not single intervals; more than `MAX_TILES` tiles of `block`."""
    _validate_sizes(q_len, k_len)
    if spec.max_len is not None and k_len > spec.max_len:
        raise ValueError(f"{spec!r} covers {spec.max_len} positions, the mask needs {k_len}")
    if k_len > MAX_SCAN_LEN:
        raise ValueError(f"a mask of {k_len} keys is more than a summary reads (at most 2^40 = {MAX_SCAN_LEN})")
    if q_len > MAX_SCAN_ROWS:
        raise ValueError(f"a mask of {q_len} query rows is more than a summary reads (at most 2^22 = {MAX_SCAN_ROWS})")
    if q_len * k_len > MAX_SCAN_CELLS and spec.row_intervals(torch.arange(0), k_len, batch) is None:
        raise ValueError(
            f"{spec!r} over {q_len}×{k_len} is {q_len * k_len:.3g} cells, evaluated one by one "
            f"(a row's keys are not one interval): at most 2^27 = {MAX_SCAN_CELLS}"
        )
    if block is not None:
        if min(block) < 1:
            raise ValueError(f"block sizes must be >= 1, got {block[0]}x{block[1]}")
        shape = -(-q_len // block[0]), -(-k_len // block[1])
        if shape[0] * shape[1] > MAX_TILES:
            raise ValueError(
                f"{block[0]}×{block[1]} tiles over {q_len}×{k_len} are {shape[0]}×{shape[1]} tiles, "
                f"more than a tile map holds (2^22 = {MAX_TILES})"
            )


def region_counts(spec: MaskSpec, q_len: int, k_len: int, grids, *, batch: int = 0, head: int = 0):
    """Allowed cells in every rectangle of each grid over a q_len × k_len mask (no size check).

    Args:
        grids: (row_edges, col_edges) pairs of int64 tensors from 0 to q_len and from 0 to k_len.

    Returns:
        One int64 tensor (rows, cols) per grid.
    """
    intervals = spec.row_intervals(torch.arange(k_len - q_len, k_len), k_len, batch)
    if intervals is None:
        return _evaluated_counts(spec, q_len, k_len, grids, batch, head)
    lo = intervals[0].clamp(0, k_len)
    hi = torch.maximum(intervals[1].clamp(0, k_len), lo)  # (Sq,) row i allows keys lo[i] <= kv < hi[i]
    return [_interval_counts(lo, hi, row_edges, col_edges, k_len) for row_edges, col_edges in grids]


def _interval_counts(lo, hi, row_edges, col_edges, k_len: int) -> torch.Tensor:
    """Rectangle counts of rows that are intervals. The overlap of [lo, hi) with the keys [0, y) is
    (y − lo)⁺ − (y − hi)⁺; summed over a bin of rows, Σ (y − a)⁺ = n·y − (the sum of those n of a < y),
    read from the bin's sorted bounds and their prefix sums at every column edge y."""
    sizes = torch.diff(row_edges)  # (bins,) rows in each bin
    width = int(sizes.max()) if sizes.numel() else 0
    bins = torch.repeat_interleave(torch.arange(len(sizes)), sizes)  # (Sq,) the bin of each row
    slot = torch.arange(len(bins)) - row_edges[:-1][bins]  # (Sq,) place of each row in its bin
    out = []
    step = max(1, _CHUNK_CELLS // max(1, len(col_edges), width))
    for b0 in range(0, len(sizes), step):  # bins in chunks, to bound the memory of the lookups
        b1 = min(len(sizes), b0 + step)
        rows = slice(int(row_edges[b0]), int(row_edges[b1]))
        y = col_edges.expand(b1 - b0, -1).contiguous()  # (bins, cols + 1)

        def below(bound, rows=rows, b0=b0, b1=b1, y=y):  # Σ over each bin's rows of (y − bound)⁺
            table = torch.full((b1 - b0, width), k_len + 1, dtype=torch.long)  # padding is never < y
            table[bins[rows] - b0, slot[rows]] = bound[rows]
            table = table.sort(dim=1).values
            prefix = torch.nn.functional.pad(table.cumsum(1), (1, 0))  # (bins, width + 1)
            n = torch.searchsorted(table, y)  # (bins, cols + 1) bounds < y
            return n * y - prefix.gather(1, n)

        out.append(torch.diff(below(lo) - below(hi), dim=1))
    return torch.cat(out) if out else torch.zeros(0, len(col_edges) - 1, dtype=torch.long)


def _evaluated_counts(spec, q_len, k_len, grids, batch, head):
    """Rectangle counts from the predicate itself, evaluated in chunks of rows."""
    outs = [torch.zeros(len(r) - 1, len(c) - 1, dtype=torch.long) for r, c in grids]
    bins = [torch.repeat_interleave(torch.arange(len(r) - 1), torch.diff(r)) for r, _ in grids]
    step = max(1, _CHUNK_CELLS // max(1, k_len))
    for r0 in range(0, q_len, step):
        r1 = min(q_len, r0 + step)
        allowed = _evaluate(spec, k_len - q_len + r0, r1 - r0, k_len, "cpu")
        allowed = allowed[min(batch, allowed.shape[0] - 1), min(head, allowed.shape[1] - 1)]  # (R, Sk)
        cum = allowed.cumsum(-1, dtype=torch.int32)  # (R, Sk) allowed keys before each column, plus it

        def before(edges, cum=cum):  # (R, len(edges)) allowed keys left of each column edge
            return torch.where(edges > 0, cum[:, (edges - 1).clamp(min=0)], 0)

        for out, row_bins, (_, col_edges) in zip(outs, bins, grids, strict=True):
            out.index_add_(0, row_bins[r0:r1], torch.diff(before(col_edges), dim=1).long())
    return outs


def _tile_edges(n: int, size: int) -> torch.Tensor:
    return torch.tensor([*range(0, n, size), n])


def _tile_states(counts: torch.Tensor, row_edges, col_edges) -> torch.Tensor:
    cells = torch.outer(torch.diff(row_edges), torch.diff(col_edges))
    states = torch.full(counts.shape, PARTIAL, dtype=torch.int8)
    states[counts == 0] = EMPTY
    states[counts == cells] = FULL
    return states


def tile_states(
    spec: MaskSpec, q_len: int, k_len: int, block: tuple[int, int], *, batch: int = 0, head: int = 0
) -> torch.Tensor:
    """EMPTY / PARTIAL / FULL of every ``block_m × block_n`` tile: int8 (ceil(q/bm), ceil(k/bn))."""
    validate_scan(spec, q_len, k_len, block, batch)
    row_edges, col_edges = _tile_edges(q_len, block[0]), _tile_edges(k_len, block[1])
    (counts,) = region_counts(spec, q_len, k_len, [(row_edges, col_edges)], batch=batch, head=head)
    return _tile_states(counts, row_edges, col_edges)
