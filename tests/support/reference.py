"""Reference implementations the tests compare attnscope with, written out in plain torch."""

from __future__ import annotations

import torch


def qkv(
    B: int,
    Hq: int,
    Hkv: int,
    Sq: int,
    Sk: int,
    D: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    v_scale: float = 1.0,
):
    """Seeded random attention inputs: q ``[B, Hq, Sq, D]``, k and v ``[B, Hkv, Sk, D]``, q and k from
    N(0, 1.5²) and v from N(0, v_scale²), drawn in that order in float32 on the CPU, then moved to
    `device` and `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Sq, D, generator=gen) * 1.5
    k = torch.randn(B, Hkv, Sk, D, generator=gen) * 1.5
    v = torch.randn(B, Hkv, Sk, D, generator=gen)
    if v_scale != 1.0:
        v = v * v_scale
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def reference_attention(q, k, v, allowed, scale):
    """float64 attention under the bool mask `allowed` (broadcast to ``[B, Hq, Sq, Sk]``), query head h
    reading kv head h // (Hq / Hkv): (out, lse, probabilities). A fully-masked row gives out 0,
    lse -inf and probabilities 0."""
    groups = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(groups, dim=1)
    v = v.double().repeat_interleave(groups, dim=1)
    scores = (q.double() @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return probs @ v, lse, probs
