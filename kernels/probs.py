"""Attention probabilities recomputed from the log-sum-exp, tile by tile: an exact region, or a pooled
map, of one head (or one kv group of heads) without ever materializing the full Sq × Sk matrix.

``p[i, j] = exp(q_i · k_j · scale - lse_i)`` where key j is allowed for query i (the mask rules of
`attnscope.kernels.flash`: position ``q_offset + i``, keys below ``q_offset + Sq``, causal, window),
0 elsewhere; a row with lse = -inf (no allowed key) is 0. The pooled map reduces each cell of a
``R × C`` grid (bins as `attnscope.pooling.pool_edges`: ``linspace(0, n, parts + 1).round()``) with
max or mean (masked entries count as 0), one program per cell and head.

This module imports triton: import it only when a kernel is called (see `attnscope.kernels`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnscope.pooling import pool_edges

from .flash import (
    INTERPRETING,
    _validate_head_dim,
    _validate_q_offset,
    _validate_scale,
    _validate_tensors,
    _validate_window,
)


@triton.jit
def _probs_tile(
    q,
    safe_lse,
    rows,
    row_ok,  # query tile [BLOCK_M, BLOCK_D], its lse (0 for -inf), indices, validity
    k_base,
    stride_kn,
    stride_kd,
    start_n,
    col_end,  # keys [start_n, start_n + BLOCK_N) ∩ [.., col_end)
    q_offset,
    kv_len,
    window,
    scale,
    IS_CAUSAL: tl.constexpr,  # key j <= position p
    HAS_WINDOW: tl.constexpr,  # key j > p - window
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # D padded to a power of two (>= 16)
    DOT_F32: tl.constexpr,  # upcast operands to float32 before tl.dot
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision ("ieee": float32 scores as in the reference)
):
    """(p [BLOCK_M, BLOCK_N] with 0 where masked or outside, key indices, key validity)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < col_end
    k = tl.load(
        k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
        mask=(offs_d[:, None] < HEAD_DIM) & col_ok[None, :],
        other=0.0,
    )
    if DOT_F32:
        k = k.to(tl.float32)
    scores = tl.dot(q, k, input_precision=DOT_PRECISION) * scale  # (BLOCK_M, BLOCK_N) float32
    pos = q_offset + rows
    allowed = row_ok[:, None] & col_ok[None, :] & (offs_n[None, :] < kv_len)
    if IS_CAUSAL:
        allowed = allowed & (offs_n[None, :] <= pos[:, None])
    if HAS_WINDOW:
        allowed = allowed & (offs_n[None, :] > pos[:, None] - window)
    p = tl.where(allowed, tl.exp(scores - safe_lse[:, None]), 0.0)
    return p, offs_n, col_ok


@triton.jit
def _key_range(
    first_row, last_row, col_start, col_end, q_offset, kv_len, window, IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr
):
    """Keys [lo, hi) of [col_start, col_end) that any of the rows first_row..last_row may see."""
    hi = tl.minimum(col_end, kv_len)
    if IS_CAUSAL:
        hi = tl.minimum(hi, q_offset + last_row + 1)
    lo = col_start
    if HAS_WINDOW:
        lo = tl.maximum(lo, q_offset + first_row - window + 1)
    return lo, hi


@triton.jit
def _load_rows(
    Q,
    LSE,
    g,
    rows,
    row_ok,
    stride_qg,
    stride_qm,
    stride_qd,
    stride_lg,
    stride_lm,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """Query rows [BLOCK_M, BLOCK_D] of head g of the group and their lse (-inf replaced by 0)."""
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(
        Q + g * stride_qg + rows[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    lse = tl.load(LSE + g * stride_lg + rows * stride_lm, mask=row_ok, other=0.0)
    return q, tl.where(lse == float("-inf"), 0.0, lse)


@triton.jit
def _attn_probs_region(
    Q,
    K,
    LSE,
    P,  # q [G, Sq, D], k [Sk, D], lse [G, Sq] float32, P [G, rows, cols] float32 zeros
    stride_qg,
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_lg,
    stride_lm,
    stride_pg,
    stride_pm,
    stride_pn,
    row_start,
    row_end,
    col_start,
    col_end,  # the region [row_start, row_end) × [col_start, col_end)
    q_offset,
    kv_len,
    window,
    scale,
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # D padded to a power of two (>= 16)
    IS_CAUSAL: tl.constexpr,  # key j <= position p
    HAS_WINDOW: tl.constexpr,  # key j > p - window
    DOT_F32: tl.constexpr,  # upcast operands to float32 before tl.dot
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision
):
    g = tl.program_id(1)
    first = row_start + tl.program_id(0) * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    q, safe_lse = _load_rows(
        Q, LSE, g, rows, row_ok, stride_qg, stride_qm, stride_qd, stride_lg, stride_lm, HEAD_DIM, BLOCK_D, DOT_F32
    )
    last = tl.minimum(first + BLOCK_M, row_end) - 1
    lo, hi = _key_range(first, last, col_start, col_end, q_offset, kv_len, window, IS_CAUSAL, HAS_WINDOW)
    # keys outside [lo, hi) are masked for every row of the tile: never computed, left at 0
    for start_n in range(lo, hi, BLOCK_N):
        p, offs_n, col_ok = _probs_tile(
            q,
            safe_lse,
            rows,
            row_ok,
            K,
            stride_kn,
            stride_kd,
            start_n,
            hi,
            q_offset,
            kv_len,
            window,
            scale,
            IS_CAUSAL,
            HAS_WINDOW,
            HEAD_DIM,
            BLOCK_N,
            BLOCK_D,
            DOT_F32,
            DOT_PRECISION,
        )
        p_ptrs = P + g * stride_pg + (rows - row_start)[:, None] * stride_pm + (offs_n - col_start)[None, :] * stride_pn
        tl.store(p_ptrs, p, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _attn_probs_pooled(
    Q,
    K,
    LSE,
    P,  # q [G, Sq, D], k [Sk, D], lse [G, Sq] float32, P [G, R, C] float32
    ROW_EDGES,
    COL_EDGES,  # int32 bin edges [R + 1], [C + 1], relative to row_start / col_start
    stride_qg,
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_lg,
    stride_lm,
    stride_pg,
    stride_pm,
    stride_pn,
    row_start,
    col_start,
    q_offset,
    kv_len,
    window,
    scale,
    REDUCE_MAX: tl.constexpr,  # max over the cell (else mean)
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # query rows per tile
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # D padded to a power of two (>= 16)
    IS_CAUSAL: tl.constexpr,  # key j <= position p
    HAS_WINDOW: tl.constexpr,  # key j > p - window
    DOT_F32: tl.constexpr,  # upcast operands to float32 before tl.dot
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision
):
    i, j, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r0 = row_start + tl.load(ROW_EDGES + i)
    r1 = row_start + tl.load(ROW_EDGES + i + 1)
    c0 = col_start + tl.load(COL_EDGES + j)
    c1 = col_start + tl.load(COL_EDGES + j + 1)
    cell = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # running elementwise max or sum
    for first in range(r0, r1, BLOCK_M):
        rows = first + tl.arange(0, BLOCK_M)
        row_ok = rows < r1
        q, safe_lse = _load_rows(
            Q, LSE, g, rows, row_ok, stride_qg, stride_qm, stride_qd, stride_lg, stride_lm, HEAD_DIM, BLOCK_D, DOT_F32
        )
        last = tl.minimum(first + BLOCK_M, r1) - 1
        lo, hi = _key_range(first, last, c0, c1, q_offset, kv_len, window, IS_CAUSAL, HAS_WINDOW)
        for start_n in range(lo, hi, BLOCK_N):
            p, offs_n, col_ok = _probs_tile(
                q,
                safe_lse,
                rows,
                row_ok,
                K,
                stride_kn,
                stride_kd,
                start_n,
                hi,
                q_offset,
                kv_len,
                window,
                scale,
                IS_CAUSAL,
                HAS_WINDOW,
                HEAD_DIM,
                BLOCK_N,
                BLOCK_D,
                DOT_F32,
                DOT_PRECISION,
            )
            if REDUCE_MAX:
                cell = tl.maximum(cell, p, propagate_nan=tl.PropagateNan.ALL)
            else:
                cell = cell + p
    if REDUCE_MAX:
        value = tl.max(tl.max(cell, 1), 0)
        nans = tl.sum(tl.sum((cell != cell).to(tl.int32), 1), 0)  # NaN is a finding: keep it
        value = tl.where(nans > 0, float("nan"), value)
    else:
        value = tl.sum(tl.sum(cell, 1), 0) / ((r1 - r0) * (c1 - c0)).to(tl.float32)
    tl.store(P + g * stride_pg + i * stride_pm + j * stride_pn, value)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    window: int | None = None,
    q_offset: int | None = None,
    rows: slice | None = None,
    cols: slice | None = None,
    pool: tuple[int, int] | None = None,
    reduce: str = "max",
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Attention probabilities of one head, recomputed as ``exp(q·k·scale - lse)`` tile by tile.

    Args:
        q: queries of one head ``[Sq, D]``, or of the G query heads of one kv group ``[G, Sq, D]``.
        k: the keys they read ``[Sk, D]`` (same dtype and device as q).
        lse: the log-sum-exp that the attention returned, ``[Sq]`` or ``[G, Sq]``.
        scale, causal, window, q_offset: as in `attention` (q_offset an int here: one batch row).
        rows, cols: the region of the ``[Sq, Sk]`` matrix (slices with step 1; default all).
        pool: ``(R, C)``: instead of the region, a map of at most R × C cells, each the max or the
            mean of its part of the region (bins of `attnscope.pooling.pool_edges`).
        reduce: "max" or "mean" (masked entries count as 0 in the mean).
        block_m, block_n: tile sizes (powers of two >= 16; None: chosen for the device).

    Returns:
        float32 ``[rows, cols]`` (or ``[R', C']`` when pooled), with a leading ``G`` for a group;
        masked entries are 0.
    """
    _validate_tensors(q=q, k=k)
    if q.dim() not in (2, 3) or k.dim() != 2:
        raise ValueError(f"q must be [Sq, D] or [G, Sq, D] and k [Sk, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on head_dim")
    if not isinstance(lse, torch.Tensor) or tuple(lse.shape) != tuple(q.shape[:-1]):
        shape = tuple(lse.shape) if isinstance(lse, torch.Tensor) else type(lse).__name__
        raise ValueError(f"lse must have shape {tuple(q.shape[:-1])} (q without its head dim), got {shape}")
    if lse.device != q.device:
        raise ValueError(f"q is on {q.device} but lse is on {lse.device}: use one device")
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    grouped = q.dim() == 3
    q3 = q if grouped else q.unsqueeze(0)  # (G, Sq, D)
    lse2 = (lse if grouped else lse.unsqueeze(0)).float()  # (G, Sq)
    G, Sq, D = q3.shape
    Sk = k.shape[0]
    _validate_head_dim(D)
    scale = _validate_scale(scale, D)
    window = _validate_window(window, causal)
    if isinstance(q_offset, torch.Tensor) and q_offset.numel() != 1:
        raise TypeError("attention_probs takes one head of one batch row: q_offset must be an int")
    _, q_offset = _validate_q_offset(q_offset, 1, Sq, Sk, q.device)
    r0, r1 = _region(rows, Sq, "rows")
    c0, c1 = _region(cols, Sk, "cols")
    BLOCK_M, BLOCK_N = _blocks(D, q.dtype, block_m, block_n)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    args = dict(
        HEAD_DIM=D,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        IS_CAUSAL=bool(causal),
        HAS_WINDOW=window is not None,
        DOT_F32=INTERPRETING and q.dtype == torch.bfloat16,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        num_warps=4,
    )
    strides = (*q3.stride(), *k.stride(), *lse2.stride())
    kv_len = q_offset + Sq

    if pool is None:
        out = torch.zeros(G, r1 - r0, c1 - c0, dtype=torch.float32, device=q.device)
        if out.numel():
            grid = (triton.cdiv(r1 - r0, BLOCK_M), G)
            _attn_probs_region[grid](
                q3, k, lse2, out, *strides, *out.stride(), r0, r1, c0, c1, q_offset, kv_len, window or 0, scale, **args
            )
        return out if grouped else out[0]

    if (
        not isinstance(pool, (tuple, list))
        or len(pool) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pool)
    ):
        raise ValueError(f"pool must be (rows, cols), two ints >= 1, got {pool!r}")
    row_edges, col_edges = pool_edges(r1 - r0, pool[0]), pool_edges(c1 - c0, pool[1])
    out = torch.zeros(G, len(row_edges) - 1, len(col_edges) - 1, dtype=torch.float32, device=q.device)
    if r1 > r0 and c1 > c0:
        re = torch.as_tensor(row_edges, dtype=torch.int32).to(q.device)
        ce = torch.as_tensor(col_edges, dtype=torch.int32).to(q.device)
        pooled_grid = (out.shape[1], out.shape[2], G)
        _attn_probs_pooled[pooled_grid](
            q3,
            k,
            lse2,
            out,
            re,
            ce,
            *strides,
            *out.stride(),
            r0,
            c0,
            q_offset,
            kv_len,
            window or 0,
            scale,
            REDUCE_MAX=reduce == "max",
            **args,
        )
    return out if grouped else out[0]


def _region(part: slice | None, n: int, name: str) -> tuple[int, int]:
    if part is None:
        return 0, n
    if not isinstance(part, slice) or part.step not in (None, 1):
        raise ValueError(f"{name} must be a slice with step 1, got {part!r}")
    start, stop, _ = part.indices(n)
    return start, max(start, stop)


def _blocks(D: int, dtype: torch.dtype, block_m: int | None, block_n: int | None) -> tuple[int, int]:
    if INTERPRETING:
        bm = bn = 32
    elif D > 128 and dtype == torch.float32:
        bm = bn = 32
    else:
        bm = bn = 64
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None and (not isinstance(value, int) or value < 16):
            raise ValueError(f"{name} must be an int >= 16, got {value!r}")
    return (
        bm if block_m is None else triton.next_power_of_2(block_m),
        bn if block_n is None else triton.next_power_of_2(block_n),
    )
