"""The eager reference backend: float32 scores, explicit mask and softmax.

GQA without copies: the query heads of one kv group are viewed as an extra dimension,
q ``[B, Hkv, G, Sq, D]``, and a chunk of their rows is multiplied with its kv head's K and V as one
matrix of G × rows rows (`grouped_matmul`), so K and V are read, never repeated per query head (a
matmul that broadcasts k ``[B, Hkv, 1, Sk, D]`` over G copies it G times first). Query rows are
processed in chunks so the float32 scores never exceed about `MAX_SCORE_ELEMENTS` at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from attnscope.backends.base import group_mask, note_lse_source, validate_shapes
from attnscope.masks import MaskSpec

# 16 MiB of float32 scores per chunk. A chunk and its few temporaries stay below glibc's largest
# mmap threshold (32 MiB), so freed chunks are reused instead of being unmapped and faulted in again
# (at 64 MiB a 4096-token capture spent more time in page faults than in arithmetic, at a higher peak).
MAX_SCORE_ELEMENTS = 1 << 22


def masked_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: MaskSpec,
    scale: float,
    max_elements: int | None = None,
    softcap: float | None = None,
) -> Iterator[tuple[slice, slice, torch.Tensor, torch.Tensor]]:
    """Yield (rows, keys, scores, allowed) chunks of query rows: `keys` the span of keys that some row
    of the chunk may see (the keys outside it are masked for every row of the chunk and are not
    computed: about half of the matrix under a causal mask, most of it under a sliding window), the
    scaled (and soft-capped) float32 scores ``[B, Hkv, G, rows, keys]`` with -inf where masked, and
    the mask chunk ``[B|1, Hkv|1, G|1, rows, keys]``; at most `max_elements` (default
    `MAX_SCORE_ELEMENTS`) scores per chunk."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dense = mask.dense(Sq, Sk, q.device)  # (B|1, Hq|1, Sq, Sk)
    allowed = group_mask(dense, Hkv)  # (B|1, Hkv|1, G|1, Sq, Sk)
    qg = q.float().view(B, Hkv, Hq // Hkv, Sq, D)  # (B, Hkv, G, Sq, D)
    kt = k.float().transpose(-1, -2)  # (B, Hkv, D, Sk)
    step = max(1, (max_elements or MAX_SCORE_ELEMENTS) // max(1, B * Hq * Sk))
    chunks = [slice(start, min(Sq, start + step)) for start in range(0, Sq, step)]
    key_cols, hidden_cols = _column_spans(dense, chunks, _seen, _hidden)  # one read-back for both
    for rows, keys, hidden in zip(chunks, key_cols, hidden_cols, strict=True):
        keys = keys if keys.stop > keys.start else slice(0, min(1, Sk))  # none seen: one masked column keeps shapes
        scores = cap(grouped_matmul(qg[..., rows, :], kt[..., keys]).mul_(scale), softcap)  # (B, Hkv, G, rows, keys)
        chunk = allowed[..., rows, keys]
        # only the keys that some row of the chunk may not see are masked (under a causal mask, the
        # chunk's own diagonal block: a small part of the row)
        lo, hi = max(hidden.start, keys.start) - keys.start, min(hidden.stop, keys.stop) - keys.start
        if lo < hi:
            scores[..., lo:hi].masked_fill_(~chunk[..., lo:hi], float("-inf"))
        yield rows, keys, scores, chunk


def grouped_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a [B, Hkv, G, rows, n] @ b [B, Hkv, n, m] -> [B, Hkv, G, rows, m]``: the G query heads of each
    kv head as the rows of one product with that head's b (keys or values); only the chunk of `a` is
    copied (to stack its rows), never b."""
    B, Hkv, G, rows, n = a.shape
    return (a.reshape(B, Hkv, G * rows, n) @ b).view(B, Hkv, G, rows, b.shape[-1])


def key_spans(allowed: torch.Tensor, bands: list[slice]) -> list[slice | None]:
    """For each band of query rows, the slice from the first to the last key that some row of it
    may see in `allowed` ``[..., Sq, Sk]`` (None when none may), read back in one transfer."""
    return [span if span.stop > span.start else None for span in _column_spans(allowed, bands, _seen)[0]]


def _seen(band: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return band.amax(dim=dims)  # a uint8 max over the rows finds the keys seen (~15× faster than a bool any())


def _hidden(band: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return band.amin(dim=dims) ^ 1


def _column_spans(allowed: torch.Tensor, bands: list[slice], *marks) -> list[list[slice]]:
    """For each `mark(band as uint8, dims)` (1 for the key columns it marks), the slice from the first
    to the last marked column of each band of rows of `allowed` (empty when none); all read back in
    one transfer."""
    Sk = allowed.shape[-1]
    if not bands or Sk == 0:
        return [[slice(0, 0)] * len(bands) for _ in marks]
    lead = tuple(range(allowed.dim() - 1))
    uint8 = [allowed[..., rows, :].view(torch.uint8) for rows in bands]
    marked = torch.stack([mark(band, lead) for mark in marks for band in uint8])  # (marks × bands, Sk)
    spans = torch.stack([marked.amax(1), marked.argmax(1), Sk - marked.flip(1).argmax(1)], 1).tolist()
    flat = [slice(lo, hi) if any_marked else slice(0, 0) for any_marked, lo, hi in spans]
    return [flat[i * len(bands) : (i + 1) * len(bands)] for i in range(len(marks))]


def cap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Logit soft-capping ``c * tanh(scores / c)`` in place (Gemma 2); the scores as they are for None."""
    if softcap is None:
        return scores
    return scores.div_(softcap).tanh_().mul_(softcap)


def row_lse(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Each row's lse of grouped masked scores ``[B, Hkv, G, rows, Sk]``, with the query head's sink
    logit (``[Hq]``) as one more term when given: -inf where every key is masked and there is no sink."""
    lse = torch.logsumexp(scores, dim=-1)  # (B, Hkv, G, rows)
    if sinks is None:
        return lse
    Hkv, G = scores.shape[1], scores.shape[2]
    return torch.logaddexp(lse, sinks.float().view(1, Hkv, G, 1))


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in float32; see `attnscope.backends` for the contract.

    A fully-masked row has lse = -inf and weights 0, not NaN (see `safe_lse`); NaN scores still
    propagate: they are a finding, not something to hide."""
    validate_shapes(q, k, v, mask)
    note_lse_source("eager")
    B, Hq, Sq, D = q.shape
    Hkv = k.shape[1]
    vf = v.float()  # (B, Hkv, Sk, D)
    out = torch.empty(B, Hkv, Hq // Hkv, Sq, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, Hkv, Hq // Hkv, Sq, dtype=torch.float32, device=q.device)
    sink = None if sinks is None else sinks.float().view(1, Hkv, Hq // Hkv, 1, 1)
    for rows, keys, scores, _ in masked_scores(q, k, mask, scale, softcap=softcap):
        # one exp per score: p = exp(s - max) in the scores' memory, out = (p @ v) / Σp, lse = max + log Σp
        peak = scores.amax(-1, keepdim=True)  # (B, Hkv, G, rows, 1); -inf for a row with no allowed key
        peak.masked_fill_(peak.abs() == float("inf"), 0.0)  # as torch.logsumexp: exp(-inf - 0) = 0, not NaN
        p = scores.sub_(peak).exp_()
        total = p.sum(-1, keepdim=True)
        if sink is not None:  # a sink adds a term to the denominator and nothing to the values
            total = total + torch.exp(sink - peak)
        lse[..., rows] = (peak + total.log()).squeeze(-1)  # -inf for a row with no key and no sink
        # a row with no key and no sink: 0 / 1 = 0; a NaN row stays NaN
        out[..., rows, :] = grouped_matmul(p, vf[..., keys, :]).div_(total.masked_fill(total == 0, 1.0))
    return out.view(B, Hq, Sq, D).to(q.dtype), lse.view(B, Hq, Sq)


def attend_rounded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MaskSpec,
    scale: float,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The textbook attention in q's own dtype, the low-precision baseline of flash-attention's rule
    (its tests' ``attention_ref(..., upcast=False)``): scores q·kᵀ·scale in the dtype, the softmax in
    float32 rounded to the dtype, p·v in the dtype. Returns out ``[B, Hq, Sq, D]``; a row with no
    allowed key gives 0. Rows in chunks of about `MAX_SCORE_ELEMENTS` scores, K and V never repeated."""
    validate_shapes(q, k, v, mask)
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    allowed = group_mask(mask.dense(Sq, Sk, q.device), Hkv)  # (B|1, Hkv|1, G|1, Sq, Sk)
    qg = (q * scale).view(B, Hkv, G, Sq, D)  # scaled first, as flash-attention's reference does (no overflow)
    kt = k.transpose(-1, -2)  # (B, Hkv, D, Sk)
    out = torch.empty_like(qg)
    sink = None if sinks is None else sinks.to(torch.float32).view(1, Hkv, G, 1, 1)
    step = max(1, MAX_SCORE_ELEMENTS // max(1, B * Hq * Sk))
    for start in range(0, Sq, step):
        rows = slice(start, start + step)
        chunk = allowed[..., rows, :]
        scores = cap(grouped_matmul(qg[..., rows, :], kt), softcap)  # (B, Hkv, G, rows, Sk) in q's dtype
        scores = scores.float().masked_fill_(~chunk, float("-inf"))
        if sink is not None:  # one more logit per row, with no value
            scores = torch.cat([scores, sink.expand(*scores.shape[:-1], 1)], dim=-1)
        p = torch.softmax(scores, dim=-1)[..., :Sk]
        if sink is None:  # a row with no allowed key: 0, not the NaN of a softmax over nothing (a NaN stays)
            p = p.masked_fill(~chunk.any(-1, keepdim=True), 0.0)
        out[..., rows, :] = grouped_matmul(p.to(q.dtype), v)
    return out.view(B, Hq, Sq, D)


def log_sum_exp(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: MaskSpec,
    scale: float,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """lse ``[B, Hq, Sq]`` of the scaled, masked scores, in float32, without the attention output."""
    B, Hq, Sq, _ = q.shape
    Hkv = k.shape[1]
    lse = torch.empty(B, Hkv, Hq // Hkv, Sq, dtype=torch.float32, device=q.device)
    for rows, _, scores, _ in masked_scores(q, k, mask, scale, softcap=softcap):
        lse[..., rows] = row_lse(scores, sinks)
    return lse.view(B, Hq, Sq)


def probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention weights exp(q·k·scale - lse) in float32, 0 where not `allowed`.

    q ``[..., Sq, D]``, k ``[..., Sk, D]``, lse ``[..., Sq]`` and allowed (bool, broadcastable to
    ``[..., Sq, Sk]``) of one head or a stack of heads.
    """
    return log_weights(q, k, lse, allowed, scale, softcap).exp_()


def log_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Log attention weights q·k·scale - lse in float32, -inf where not `allowed` (and for every key
    of a row with lse = -inf); shapes as in `probabilities`. Max-pooling these and exponentiating the
    cells gives the max-pooled weights without exponentiating every score."""
    scores = cap((q.float() * scale) @ k.float().transpose(-1, -2), softcap)  # (..., Sq, Sk)
    scores = scores.sub_(safe_lse(lse).unsqueeze(-1))
    return torch.where(allowed, scores, float("-inf"))


def weights_from_lse(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(scores - lse) for masked scores (-inf where masked), computed in the scores' own memory
    (which the caller gives up); rows with lse = -inf give 0, not NaN."""
    return scores.sub_(safe_lse(lse).unsqueeze(-1)).exp_()


def safe_lse(lse: torch.Tensor) -> torch.Tensor:
    """Float32 lse with -inf (a row with no allowed key) replaced by 0: that row's masked scores then
    give exp(-inf - 0) = 0 instead of exp(-inf - -inf) = NaN. NaN stays NaN."""
    return lse.float().masked_fill(lse == float("-inf"), 0.0)
