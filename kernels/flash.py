"""Fused attention forward (FlashAttention-2 style) with GQA, bottom-right causal alignment, ragged
per-batch offsets, sliding windows and split-KV decoding.

References: the Triton tutorial ``06-fused-attention.py`` (online softmax in base 2, causal work
split into tile ranges) and flash-attention's ``flash_attn_triton.py`` / FlashDecoding (split-KV,
partial results combined by their log-sum-exp).

Layout of one program's work. A program owns one kv head of one batch row and BLOCK_M *rows*; the
rows enumerate (query position, query head of the kv group) pairs query-major: row r is query
``r // G`` of query head ``kv_head * G + r % G`` (G = Hq // Hkv). So the G query heads that read the
same kv head share every K/V tile load (no K/V copies, no repeat_interleave), a decode step
(Sq = 1) fills a tile with the group's heads instead of padding, and the rows' positions grow with
r, so causal and window limits of a tile stay tight.

Masks. Row i of batch b is at absolute position ``p = q_offset[b] + i``; the sequence holds
``n_b = q_offset[b] + Sq`` keys (0 .. n_b - 1; cache slots beyond are not written yet and are
masked). Causal: key j <= p. Window w: key j > p - w (always with causal, HF/Mistral semantics).
For the key range of a block of rows, the tiles are sorted into: skipped (fully masked: never
loaded), partial (loaded and masked with ``tl.where``) and full (no mask arithmetic).

Split-KV (decode). When a launch has too few programs to fill the GPU (one sequence, one query),
the key range of each block is cut into ``n_splits`` chunks handled by separate programs, each
writing a normalized partial output and its lse (float32); `_attn_combine` merges them:
``lse = logsumexp_s(lse_s)``, ``out = sum_s exp(lse_s - lse) * out_s``.

This module imports triton: import it only when a kernel is called (see `attnscope.kernels`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton import knobs

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = exp2(x * LOG2E)
INTERPRETING = bool(knobs.runtime.interpret)  # decided when this module's kernels were decorated
MAX_SPLITS = 128


@triton.jit
def _attn_tiles(
    acc,
    l_i,
    m_i,  # running output [BLOCK_M, BLOCK_D], row sums and row maxima (base 2), float32
    q,  # [BLOCK_M, BLOCK_D] query tile
    k_base,
    v_base,  # K and V pointers of this (batch, kv head)
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    offs_d,
    pos,  # [BLOCK_D] head-dim offsets; [BLOCK_M] absolute position of each row
    kv_len,
    window,
    qk_scale,  # keys of this sequence; window; scale * LOG2E
    start,
    end,  # key range [start, end), start a multiple of BLOCK_N
    MASKED: tl.constexpr,  # partial tiles: bounds, causal and window masks applied with tl.where
    IS_CAUSAL: tl.constexpr,  # key j <= position p
    HAS_WINDOW: tl.constexpr,  # key j > p - window
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # D padded to a power of two (>= 16)
    DOT_F32: tl.constexpr,  # upcast operands to float32 before tl.dot (the interpreter's bfloat16)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs: no TF32 rounding on GPU
):
    d_ok = offs_d < HEAD_DIM
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < kv_len
        k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (BLOCK_D, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, BLOCK_D)
        if MASKED:
            k = tl.load(k_ptrs, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        elif HEAD_DIM == BLOCK_D:  # full tile, no padding: plain loads
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) base-2 scores
        if MASKED:
            allowed = n_ok[None, :]
            if IS_CAUSAL:
                allowed = allowed & (offs_n[None, :] <= pos[:, None])
            if HAS_WINDOW:
                allowed = allowed & (offs_n[None, :] > pos[:, None] - window)
            qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with no allowed key so far has m_new = -inf: subtract 0 instead, so that
        # exp2(-inf - -inf) = NaN never happens (its p and alpha are exp2(-inf) = 0).
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(qk - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    OUT,
    LSE,  # q [B, Hq, Sq, D]; k, v [B, Hkv, Sk, D]; out and lse (final, or split partials)
    Q_OFFSETS,  # int32 [B] per-batch q_offset (read only when PER_BATCH_OFFSET)
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_os,
    stride_ob,
    stride_oh,
    stride_om,
    stride_od,  # stride_os: between splits (0 without)
    stride_ls,
    stride_lb,
    stride_lh,
    stride_lm,
    n_kv_heads,
    Sq,
    q_offset,
    window,
    qk_scale,  # scalar q_offset (unless PER_BATCH_OFFSET); window (or 0); scale * LOG2E
    kv_chunk,  # keys per split, a multiple of BLOCK_N (the last split runs to the end)
    GROUP: tl.constexpr,  # G = Hq // Hkv, query heads per kv head
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # rows (query, head of the group) per program
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # D padded to a power of two (>= 16)
    IS_CAUSAL: tl.constexpr,  # mask keys after the row's position
    HAS_WINDOW: tl.constexpr,  # mask keys at or before the row's position - window
    PER_BATCH_OFFSET: tl.constexpr,  # q_offset read from Q_OFFSETS[b] (ragged batch)
    SPLIT: tl.constexpr,  # split-KV: axis 2 of the grid picks a chunk of the key range
    DOT_F32: tl.constexpr,  # upcast operands to float32 before tl.dot (the interpreter's bfloat16)
    DOT_PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" for float32 (no TF32), None otherwise
):
    n_rows = Sq * GROUP
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the heaviest (latest) row blocks first
    off_bh = tl.program_id(1)
    b = off_bh // n_kv_heads
    kv_head = off_bh % n_kv_heads
    if PER_BATCH_OFFSET:
        q_offset = tl.load(Q_OFFSETS + b)
    kv_len = q_offset + Sq  # keys of this sequence

    # rows of this program: query i = r // G of query head kv_head * G + r % G
    r0 = start_m * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    query = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    pos = q_offset + query  # absolute positions, nondecreasing in r
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    # key range any row may see: [lo, hi); tiles inside [full_lo, full_hi) need no mask
    p_lo = q_offset + r0 // GROUP
    p_hi = q_offset + (tl.minimum(r0 + BLOCK_M, n_rows) - 1) // GROUP
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(p_hi + 1, kv_len), 0)
        full_hi = tl.maximum(tl.minimum(p_lo + 1, kv_len), 0) // BLOCK_N * BLOCK_N
    else:
        hi = kv_len
        full_hi = kv_len // BLOCK_N * BLOCK_N
    if HAS_WINDOW:
        lo = tl.maximum(p_lo - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(p_hi - window + 1, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    else:
        lo = 0
        full_lo = 0
    lo = tl.minimum(lo, hi)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    split = 0
    if SPLIT:
        split = tl.program_id(2)
        c0 = lo + split * kv_chunk
        c1 = tl.where(split == tl.num_programs(2) - 1, hi, c0 + kv_chunk)
        lo, full_lo, full_hi, hi = (
            tl.maximum(lo, c0),
            tl.minimum(tl.maximum(full_lo, c0), c1),
            tl.minimum(tl.maximum(full_hi, c0), c1),
            tl.minimum(hi, c1),
        )

    b64 = b.to(tl.int64)
    q = tl.load(
        Q + b64 * stride_qb + head[:, None] * stride_qh + query[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = K + b64 * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + kv_head.to(tl.int64) * stride_vh

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    # partial tiles at the window's lower edge, full tiles, partial tiles at the diagonal / the end
    acc, l_i, m_i = _attn_tiles(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_kd,
        stride_vn,
        stride_vd,
        offs_d,
        pos,
        kv_len,
        window,
        qk_scale,
        lo,
        full_lo,
        True,
        IS_CAUSAL,
        HAS_WINDOW,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        DOT_F32,
        DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_tiles(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_kd,
        stride_vn,
        stride_vd,
        offs_d,
        pos,
        kv_len,
        window,
        qk_scale,
        full_lo,
        full_hi,
        False,
        IS_CAUSAL,
        HAS_WINDOW,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        DOT_F32,
        DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_tiles(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kn,
        stride_kd,
        stride_vn,
        stride_vd,
        offs_d,
        pos,
        kv_len,
        window,
        qk_scale,
        full_hi,
        hi,
        True,
        IS_CAUSAL,
        HAS_WINDOW,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        DOT_F32,
        DOT_PRECISION,
    )

    # a row with no allowed key (l_i = 0): out 0, lse -inf
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    o_ptrs = (
        OUT
        + split * stride_os
        + b64 * stride_ob
        + head[:, None] * stride_oh
        + query[:, None] * stride_om
        + offs_d[None, :] * stride_od
    )
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + split * stride_ls + b64 * stride_lb + head * stride_lh + query * stride_lm, lse, mask=row_ok)


@triton.jit
def _attn_combine(
    OUT_PART,
    LSE_PART,  # float32 partials [n_splits, R, D] and [n_splits, R] (R = B * Hq * Sq rows)
    OUT,
    LSE,  # out [R, D] in the output dtype, lse [R] float32 (both contiguous)
    n_splits,
    n_rows,
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_S: tl.constexpr,  # n_splits padded to a power of two
    BLOCK_D: tl.constexpr,  # D padded to a power of two
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_s = tl.arange(0, BLOCK_S).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = rows < n_rows
    s_ok = offs_s < n_splits
    d_ok = offs_d < HEAD_DIM
    rs_ok = r_ok[:, None] & s_ok[None, :]
    lse_s = tl.load(LSE_PART + offs_s[None, :] * n_rows + rows[:, None], mask=rs_ok, other=float("-inf"))
    m = tl.max(lse_s, 1)  # (BLOCK_R,)
    m_ref = tl.where(m == float("-inf"), 0.0, m)  # every split empty: weights exp(-inf) = 0, not NaN
    w = tl.exp(lse_s - m_ref[:, None])  # (BLOCK_R, BLOCK_S)
    total = tl.sum(w, 1)
    o = tl.load(
        OUT_PART + ((offs_s[None, :, None] * n_rows + rows[:, None, None]) * HEAD_DIM + offs_d[None, None, :]),
        mask=rs_ok[:, :, None] & d_ok[None, None, :],
        other=0.0,
    )  # (BLOCK_R, BLOCK_S, BLOCK_D)
    empty = total == 0.0
    out = tl.sum(o * w[:, :, None], 1) / tl.where(empty, 1.0, total)[:, None]
    tl.store(
        OUT + rows[:, None] * HEAD_DIM + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=r_ok[:, None] & d_ok[None, :],
    )
    tl.store(LSE + rows, tl.where(empty, float("-inf"), m_ref + tl.log(tl.where(empty, 1.0, total))), mask=r_ok)


# ----------------------------------------------------------------------------------------------
# The public wrapper

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    q_offset: int | torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    kv_chunk: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused attention of new queries against a KV cache, GQA inside the kernel.

    Args:
        q: queries ``[B, Hq, Sq, D]`` (float16, bfloat16 or float32; D <= 256).
        k, v: keys and values ``[B, Hkv, Sk, D]``, same dtype and device; Hq a multiple of Hkv. Any
            strides (a view of a preallocated cache is read in place).
        causal: mask keys after each query's position (bottom-right aligned).
        q_offset: position of query 0: an int, or an integer tensor ``[B]`` for a ragged batch
            (flash-attn's ``cache_seqlens - Sq``). Default ``Sk - Sq``. Query i of batch row b is at
            position ``q_offset[b] + i`` and row b holds ``q_offset[b] + Sq`` keys: keys from there on
            are masked even without `causal`. Must be in ``[-Sq, Sk - Sq]``; queries at negative
            positions (causal) see no key: output 0, lse -inf.
        window: sliding window w (needs `causal`): position p sees keys in ``(p - w, p]``.
        scale: score scale, default ``D ** -0.5``.
        return_lse: also return the natural-log log-sum-exp of the scaled, masked scores.
        kv_chunk: split-KV: keys per program along the key range (None: automatic, splitting only
            when the launch would not fill the GPU, e.g. decoding one sequence).
        block_m, block_n: tile sizes (powers of two >= 16; None: chosen for D, dtype and device).

    Returns:
        out ``[B, Hq, Sq, D]`` in q's dtype, and with `return_lse` also lse ``[B, Hq, Sq]`` float32.
    """
    _validate_tensors(q=q, k=k, v=v)
    for name, t, shape in (("q", q, "[B, Hq, Sq, D]"), ("k", k, "[B, Hkv, Sk, D]"), ("v", v, "[B, Hkv, Sk, D]")):
        if t.dim() != 4:
            raise ValueError(f"{name} must be {shape}, got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch size or head_dim")
    if Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    _validate_head_dim(D)
    scale = _validate_scale(scale, D)
    window = _validate_window(window, causal)
    offsets, q_offset = _validate_q_offset(q_offset, B, Sq, Sk, q.device)
    for name, value in (("kv_chunk", kv_chunk), ("block_m", block_m), ("block_n", block_n)):
        if value is not None and (not isinstance(value, int) or value < 16):
            raise ValueError(f"{name} must be an int >= 16, got {value!r}")

    out = torch.empty(B, Hq, Sq, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, Sq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return (out, lse) if return_lse else out
    G = Hq // Hkv
    n_rows = G * Sq
    BLOCK_M, BLOCK_N, warps, stages = _blocks(D, q.dtype, n_rows, block_m, block_n)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    m_blocks = triton.cdiv(n_rows, BLOCK_M)
    span = Sk if window is None else min(Sk, window + BLOCK_M // G + 2 * BLOCK_N)
    n_splits, chunk = _splits(B * Hkv * m_blocks, span, BLOCK_N, kv_chunk, q.device)
    target_o, target_lse = out, lse
    if n_splits > 1:  # float32 partials, merged by _attn_combine
        target_o = torch.empty(n_splits, B, Hq, Sq, D, dtype=torch.float32, device=q.device)
        target_lse = torch.empty(n_splits, B, Hq, Sq, dtype=torch.float32, device=q.device)
    o_strides = target_o.stride() if n_splits > 1 else (0, *out.stride())  # (split, b, h, m, d)
    l_strides = target_lse.stride() if n_splits > 1 else (0, *lse.stride())  # (split, b, h, m)

    grid = (m_blocks, B * Hkv, n_splits)
    _attn_fwd[grid](
        q,
        k,
        v,
        target_o,
        target_lse,
        offsets,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o_strides,
        *l_strides,
        Hkv,
        Sq,
        q_offset,
        window or 0,
        scale * LOG2E,
        chunk,
        GROUP=G,
        HEAD_DIM=D,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        IS_CAUSAL=bool(causal),
        HAS_WINDOW=window is not None,
        PER_BATCH_OFFSET=offsets is not None,
        SPLIT=n_splits > 1,
        DOT_F32=INTERPRETING and q.dtype == torch.bfloat16,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        num_warps=warps,
        num_stages=stages,
    )
    if n_splits > 1:
        n_out = B * Hq * Sq
        rows_per_program = 16 if INTERPRETING else 1  # the interpreter pays per program, a GPU wants many
        _attn_combine[(triton.cdiv(n_out, rows_per_program),)](
            target_o,
            target_lse,
            out,
            lse,
            n_splits,
            n_out,
            HEAD_DIM=D,
            BLOCK_R=rows_per_program,
            BLOCK_S=triton.next_power_of_2(n_splits),
            BLOCK_D=triton.next_power_of_2(D),
            num_warps=4 if D > 64 else 2,
        )
    return (out, lse) if return_lse else out


def _blocks(D: int, dtype: torch.dtype, n_rows: int, block_m: int | None, block_n: int | None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dim, dtype and rows per kv head."""
    if INTERPRETING:
        bm, bn, warps, stages = 64, 32, 4, 1  # the interpreter's cost is per op, not per element
    elif dtype == torch.float32:
        bm, bn, warps, stages = (64, 64, 4, 2) if D <= 64 else (64, 32, 4, 2) if D <= 128 else (32, 32, 4, 2)
    else:
        bm, bn, warps, stages = (128, 64, 4, 3) if D <= 64 else (128, 64, 8, 3) if D <= 128 else (64, 64, 8, 2)
    if block_m is None:
        bm = min(bm, max(16, triton.next_power_of_2(n_rows)))
    else:
        bm = triton.next_power_of_2(block_m)
    bn = bn if block_n is None else triton.next_power_of_2(block_n)
    if bm <= 32:  # decode-sized tiles (a GQA group of rows): fewer warps
        warps = min(warps, 4)
    return bm, bn, warps, stages


def _splits(n_programs: int, span: int, block_n: int, kv_chunk: int | None, device: torch.device):
    """(n_splits, keys per split) for split-KV; (1, span) when the grid already fills the device."""
    if kv_chunk is None:
        if INTERPRETING or device.type != "cuda":
            return 1, span
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        min_chunk = 4 * block_n
        if n_programs >= sms or span < 2 * min_chunk:
            return 1, span
        n = min(triton.cdiv(2 * sms, n_programs), triton.cdiv(span, min_chunk), MAX_SPLITS)
        kv_chunk = triton.cdiv(span, n)
    chunk = triton.cdiv(kv_chunk, block_n) * block_n  # tiles stay aligned to BLOCK_N
    n = min(max(1, triton.cdiv(span, chunk)), MAX_SPLITS)  # the last split runs to the end of the range
    return n, chunk


# ----------------------------------------------------------------------------------------------
# Validation shared with `attention_probs`


def _validate_tensors(**tensors: torch.Tensor) -> None:
    """Tensors, float16/bfloat16/float32 alike, on one device that the kernels can run on."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    names, values = list(tensors), list(tensors.values())
    first = values[0]
    for name, t in tensors.items():
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; the Triton kernels take float16, bfloat16 or float32")
        if t.dtype != first.dtype:
            raise TypeError(f"{names[0]} is {first.dtype} but {name} is {t.dtype}: use one dtype")
        if t.device != first.device:
            raise ValueError(f"{names[0]} is on {first.device} but {name} is on {t.device}: use one device")
    _validate_device(first.device)


def _validate_head_dim(D: int) -> None:
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim {D} is not supported (1..{MAX_HEAD_DIM}; e.g. 32, 64, 80, 96, 128, 256)")


def _validate_device(device: torch.device) -> None:
    if device.type == "cuda" or (INTERPRETING and device.type == "cpu"):
        return
    if device.type == "cpu":
        raise ValueError(
            "the tensors are on the CPU: the Triton kernels need CUDA tensors, or "
            "TRITON_INTERPRET=1 set before the first kernel call to run them in the interpreter"
        )
    raise ValueError(f"the Triton kernels run on CUDA tensors, got device {device}")


def _validate_scale(scale: float | None, D: int) -> float:
    if scale is None:
        return D**-0.5
    if isinstance(scale, torch.Tensor) or not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite Python number, got {scale!r}")
    return float(scale)


def _validate_window(window: int | None, causal: bool) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not causal:
        raise ValueError("a sliding window is causal (position p sees keys in (p - window, p]): pass causal=True")
    return window


def _validate_q_offset(q_offset, B: int, Sq: int, Sk: int, device: torch.device) -> tuple[torch.Tensor | None, int]:
    """(per-batch int32 offsets or None, scalar offset) after checking ``-Sq <= q_offset <= Sk - Sq``."""
    if q_offset is None:
        if Sq > Sk:
            raise ValueError(f"more queries ({Sq}) than keys ({Sk}): pass q_offset to place the queries")
        return None, Sk - Sq
    if isinstance(q_offset, torch.Tensor) and q_offset.dim() == 0:
        q_offset = q_offset.item()
    if isinstance(q_offset, torch.Tensor):
        if q_offset.dtype.is_floating_point or q_offset.dtype.is_complex or q_offset.dtype == torch.bool:
            raise TypeError(f"q_offset must be an integer tensor, got {q_offset.dtype}")
        if tuple(q_offset.shape) != (B,):
            raise ValueError(f"a q_offset tensor must have shape [B] = [{B}], got {tuple(q_offset.shape)}")
        lo, hi = int(q_offset.min()), int(q_offset.max())
        if lo < -Sq or hi > Sk - Sq:
            raise ValueError(f"q_offset values must be in [-Sq, Sk - Sq] = [{-Sq}, {Sk - Sq}], got {lo}..{hi}")
        return q_offset.to(device=device, dtype=torch.int32).contiguous(), 0
    if isinstance(q_offset, bool) or not isinstance(q_offset, int):
        raise TypeError(f"q_offset must be an int or an integer tensor [B], got {type(q_offset).__name__}")
    if not -Sq <= q_offset <= Sk - Sq:
        raise ValueError(f"q_offset must be in [-Sq, Sk - Sq] = [{-Sq}, {Sk - Sq}], got {q_offset}")
    return None, q_offset
