"""What the inspector keeps of each attention call, and what it computes from it.

Probabilities are never stored as ``[L, H, T, T]``: a `LayerRecord` keeps the post-RoPE q and k the
backend saw, and the lse it returned, so any region of the attention matrix is recomputed on demand
as ``exp(q·k·scale - lse)``, one chunk of query rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnscope.backends import group_mask
from attnscope.backends.eager import probabilities
from attnscope.masks import MaskSpec

ROW_CHUNK_ELEMENTS = 1 << 24  # probabilities computed at once when summarizing a layer


@dataclass
class LayerRecord:
    layer: int
    q: torch.Tensor  # [B, Hq, Sq, D] post-RoPE queries
    k: torch.Tensor  # [B, Hkv, Sk, D] post-RoPE keys, cache included
    lse: torch.Tensor  # [B, Hq, Sq] float32
    out: torch.Tensor  # [B, Hq, Sq, D] attention output (before o_proj)
    mask: MaskSpec
    scale: float

    @property
    def n_groups(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    def probabilities(self, head: int, rows: slice = slice(None), cols: slice = slice(None),
                      batch: int = 0) -> torch.Tensor:
        """Float32 attention weights of one query head, ``[rows, cols]`` of ``[Sq, Sk]``."""
        Sq, Sk = self.q.shape[2], self.k.shape[2]
        allowed = self.mask.dense(Sq, Sk, self.q.device)  # (B|1, Hq|1, Sq, Sk)
        allowed = allowed[min(batch, allowed.shape[0] - 1), min(head, allowed.shape[1] - 1)]
        q = self.q[batch, head, rows]  # (rows, D)
        k = self.k[batch, head // self.n_groups, cols]  # (cols, D)
        return probabilities(q, k, self.lse[batch, head, rows], allowed[rows, cols], self.scale)

    def head_statistics(self, batch: int = 0) -> dict[str, torch.Tensor]:
        """Per query head, averaged over query rows: ``entropy`` (nats), ``max_weight`` (the row's
        largest weight), ``first_token_mass`` (weight on key 0, the attention sink). Each ``[Hq]``."""
        _, Hq, Sq, D = self.q.shape
        Hkv, Sk = self.k.shape[1], self.k.shape[2]
        allowed = group_mask(self.mask.dense(Sq, Sk, self.q.device), Hkv)  # (B|1, Hkv|1, G|1, Sq, Sk)
        allowed = allowed[min(batch, allowed.shape[0] - 1)]
        q = self.q[batch].view(Hkv, self.n_groups, Sq, D)  # (Hkv, G, Sq, D)
        k = self.k[batch].unsqueeze(1)  # (Hkv, 1, Sk, D)
        lse = self.lse[batch].view(Hkv, self.n_groups, Sq)
        sums = torch.zeros(3, Hkv, self.n_groups, dtype=torch.float32, device=self.q.device)
        step = max(1, ROW_CHUNK_ELEMENTS // max(1, Hq * Sk))
        for start in range(0, Sq, step):
            rows = slice(start, min(Sq, start + step))
            p = probabilities(q[:, :, rows], k, lse[:, :, rows], allowed[..., rows, :], self.scale)
            plogp = torch.where(p > 0, p * torch.log(p), torch.zeros((), device=p.device))
            sums[0] += -plogp.sum(-1).sum(-1)  # entropy
            sums[1] += p.amax(-1).sum(-1)
            sums[2] += p[..., 0].sum(-1)
        means = (sums / max(Sq, 1)).view(3, Hq)
        return {"entropy": means[0], "max_weight": means[1], "first_token_mass": means[2]}


class Capture:
    """A recorder for `Transformer.forward`: keeps one `LayerRecord` per layer of the last call."""

    def __init__(self):
        self.records: dict[int, LayerRecord] = {}

    def __call__(self, layer: int, *, q, k, v, out, lse, mask, scale) -> None:
        self.records[layer] = LayerRecord(layer, q, k, lse, out, mask, scale)
