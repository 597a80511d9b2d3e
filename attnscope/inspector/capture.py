"""What the inspector keeps of each attention call, and what it computes from it.

Probabilities are never stored as ``[L, H, T, T]``. A `LayerRecord` keeps what the backend saw and
returned: post-RoPE q ``[B, Hq, Sq, D]``, k and v ``[B, Hkv, Sk, D]``, the output and the lse
``[B, Hq, Sq]``, the mask spec, and the features the layer used (logit soft-capping, sink logits).
Any region of the attention matrix is recomputed on demand as
``exp(q·k·scale - lse)``, a chunk of query rows at a time; per-row statistics (`RowStats`) are
computed the same way, once, and kept: they are ``[B, Hq, Sq]`` each.

What a capture keeps of every layer lives in one buffer per kind for all the layers (`LayerBuffers`):
kept tensors allocated one by one among a layer's large temporaries (a forward's activations, the
score chunks) leave the allocator's freed memory in pieces that the next layer's temporaries no
longer fit, and the process grows with every layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from attnscope.backends import eager, take_lse_source
from attnscope.backends.eager import key_spans, masked_scores, weights_from_lse
from attnscope.masks import MaskSpec
from attnscope.pooling import pool_edges

STATS_CHUNK_ELEMENTS = 1 << 21  # float32 scores at once when summarizing a layer (several temporaries each)
# elements tested at once by `nonfinite_counts`: torch.isfinite makes a float copy (abs) and three bool
# tensors of its input, 7 bytes per float32 element, which over a prompt's logits is gigabytes
NONFINITE_CHUNK_ELEMENTS = 1 << 20


class LayerBuffers:
    """What a loop over `n_layers` layers keeps of each one, copied into one buffer per kind
    ``[n_layers, ...]``, allocated when the first layer's tensor of that kind arrives.

    With glibc's malloc, a tensor that lives on but is allocated in between a layer's temporaries
    takes its memory from the holes those leave (a piece of each); the next layer's temporaries of
    the same sizes then no longer fit there and the heap grows by some of them at every layer
    (at 2048 tokens, ~4 MB a layer of a 30-layer capture's forward and ~5-8 MB a layer of the
    backend_vs_reference check). With the kept tensors in buffers allocated once (large ones are
    mapped apart from the heap), only temporaries come and go, and each layer reuses the memory
    of the one before, as in a plain forward. A tensor unlike its kind's buffer (another shape,
    dtype or device, or a layer outside the range) is kept as it is."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._buffers: dict[str, torch.Tensor] = {}

    def keep(self, kind: str, layer: int, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` copied into row `layer` of the buffer of `kind`; that row (a view) is returned."""
        buffer = self._buffers.get(kind)
        if buffer is None:
            buffer = self._buffers[kind] = tensor.new_empty((self.n_layers, *tensor.shape))
        if (
            buffer.shape[1:] != tensor.shape
            or buffer.dtype != tensor.dtype
            or buffer.device != tensor.device
            or not 0 <= layer < self.n_layers
        ):
            return tensor
        return buffer[layer].copy_(tensor)

    def keep_fields(self, layer: int, result):
        """A dataclass of per-layer results (`RowStats`, a check's `Diff`) with each tensor field kept."""
        return dataclasses.replace(
            result,
            **{
                f.name: self.keep(f.name, layer, value)
                for f in dataclasses.fields(result)
                if isinstance(value := getattr(result, f.name), torch.Tensor)
            },
        )


@dataclass
class RowStats:
    """Per (batch, query head, query row) statistics of one layer's attention, each ``[B, Hq, Sq]``."""

    entropy: torch.Tensor  # nats; 0 for a fully-masked row, NaN where a weight is NaN
    max_weight: torch.Tensor
    argmax: torch.Tensor  # key index of the largest weight
    first_token_mass: torch.Tensor  # weight on key 0 (the attention sink)
    focus: torch.Tensor  # the largest weight on a key other than key 0, the query itself and the key before it
    weight_sum: torch.Tensor  # over the keys: 1 for a correct lse (less the sink's), 0 for a fully-masked row
    sink_weight: torch.Tensor  # the attention sink's share exp(sink - lse); 0 without sinks
    fully_masked: torch.Tensor  # bool: no key allowed
    nonfinite_scores: torch.Tensor  # count of NaN/Inf among the allowed scores
    nonfinite_weights: torch.Tensor
    nonfinite_output: torch.Tensor  # count of NaN/Inf in the row's output vector


@dataclass
class LayerRecord:
    layer: int
    q: torch.Tensor  # [B, Hq, Sq, D] post-RoPE queries
    k: torch.Tensor  # [B, Hkv, Sk, D] post-RoPE keys, cache included
    v: torch.Tensor  # [B, Hkv, Sk, D]
    out: torch.Tensor  # [B, Hq, Sq, D] attention output (before o_proj)
    lse: torch.Tensor | None  # [B, Hq, Sq] float32; None from a capture that does not keep it (`Capture`)
    mask: MaskSpec
    scale: float
    softcap: float | None = None  # logit soft-capping c·tanh(score / c), applied before the mask
    sinks: torch.Tensor | None = None  # [Hq] sink logits that joined each row's softmax
    residual_nonfinite: torch.Tensor | None = None  # [B, Sq] NaN/Inf count of the block's output
    residual: torch.Tensor | None = None  # [B, Sq, hidden] the block's output, when the capture keeps it
    lse_source: str | None = None  # what computed the lse (`attnscope.backends.note_lse_source`); None: the backend
    _stats: RowStats | None = None

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.k.shape[1]

    @property
    def kept_lse(self) -> torch.Tensor:
        """The lse, which the probabilities and statistics are recomputed from (a record captured
        without it cannot give them)."""
        if self.lse is None:
            raise ValueError(f"layer {self.layer}'s record was captured without its lse")
        return self.lse

    @property
    def shape(self) -> tuple[int, int]:
        """(Sq, Sk) of the attention matrix."""
        return self.q.shape[2], self.k.shape[2]

    def allowed(self, head: int, batch: int = 0) -> torch.Tensor:
        """Bool [Sq, Sk] mask of one query head."""
        dense = self.mask.dense(*self.shape, self.q.device)  # (B|1, Hq|1, Sq, Sk)
        return dense[min(batch, dense.shape[0] - 1), min(head, dense.shape[1] - 1)]

    def probabilities(
        self, head: int, queries: slice = slice(None), keys: slice = slice(None), batch: int = 0
    ) -> torch.Tensor:
        """Float32 attention weights of one query head, ``[queries, keys]`` of ``[Sq, Sk]``."""
        return self.log_weights(head, queries, keys, batch).exp_()

    def log_weights(
        self, head: int, queries: slice = slice(None), keys: slice = slice(None), batch: int = 0
    ) -> torch.Tensor:
        """Float32 log attention weights q·k·scale − lse of one query head, ``[queries, keys]``; -inf
        where masked (and for every key of a row that has none)."""
        return eager.log_weights(
            self.q[batch, head, queries],
            self.k[batch, head // self.group_size, keys],
            self.kept_lse[batch, head, queries],
            self.allowed(head, batch)[queries, keys],
            self.scale,
            self.softcap,
        )

    def score(self, head: int, query: int, key: int, batch: int = 0) -> float:
        """The score of one cell that enters the softmax: q·k·scale (soft-capped where the layer caps),
        before the mask."""
        q = self.q[batch, head, query].float()
        k = self.k[batch, head // self.group_size, key].float()
        return float(eager.cap((q @ k).mul_(self.scale), self.softcap))

    def weights_at(self, head: int, offset: int, batch: int = 0) -> torch.Tensor:
        """Float32 ``[Sq]``: each query row's weight on the key `offset` positions before it (0: itself);
        0 where that key does not exist or is masked. O(Sq·D): no score matrix."""
        Sq, Sk = self.shape
        past = Sk - Sq
        keys = torch.arange(past, Sk, device=self.q.device) - offset  # (Sq,) absolute key index
        valid = keys >= 0
        k = self.k[batch, head // self.group_size, keys.clamp(min=0)].float()  # (Sq, D)
        scores = eager.cap((self.q[batch, head].float() * k).sum(-1) * self.scale, self.softcap)  # (Sq,)
        allowed = self.allowed(head, batch)[torch.arange(Sq, device=self.q.device), keys.clamp(min=0)]
        scores = scores.masked_fill(~(valid & allowed), float("-inf"))
        return weights_from_lse(scores[:, None], self.kept_lse[batch, head])[:, 0]

    def pooled(
        self,
        head: int,
        height: int,
        width: int,
        reduce: str = "max",
        batch: int = 0,
        queries: slice = slice(None),
        keys: slice = slice(None),
    ) -> np.ndarray:
        """A ``height × width`` pooled map of one head's weights (of the region queries × keys),
        computed one band of query rows at a time: the full matrix is never materialized.

        Args:
            head: query head.
            height, width: the grid size in cells (at most; a smaller matrix is not upsampled).
            reduce: "max" or "mean" over each cell's region.
        """
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        q0, q1, _ = queries.indices(self.shape[0])
        k0, k1, _ = keys.indices(self.shape[1])
        re, ce = pool_edges(q1 - q0, height), pool_edges(k1 - k0, width)
        if q1 <= q0 or k1 <= k0:  # an empty region: no weights
            return np.zeros((len(re) - 1, len(ce) - 1), dtype=np.float32)
        lengths = torch.as_tensor(np.diff(ce), device=self.q.device)
        allowed = self.allowed(head, batch)[q0:q1, k0:k1]  # (Sq', Sk')
        # several bins of rows a band, up to STATS_CHUNK_ELEMENTS cells: on a CPU, bands of a bin's few
        # rows each cost more in calls than in arithmetic
        bins = len(re) - 1
        per_band = max(1, STATS_CHUNK_ELEMENTS // ((k1 - k0) * max(1, int(np.diff(re).max()))))
        groups = [(i, min(bins, i + per_band)) for i in range(0, bins, per_band)]
        # only the keys that some row of a band may see are computed (causal: half the matrix)
        spans = key_spans(allowed, [slice(re[i], re[j]) for i, j in groups])
        n_keys = allowed.shape[1]
        fill = float("-inf") if reduce == "max" else 0.0
        cells = []
        for (i, j), span in zip(groups, spans, strict=True):
            # (bins, Sk') per key over each bin's rows: the largest log weight (exp is monotonic, so
            # only the cells are exponentiated), or the sum of the weights
            columns = torch.full((j - i, n_keys), fill, device=self.q.device)
            rows = torch.as_tensor(np.diff(re[i : j + 1]), device=self.q.device)
            if span is not None:
                band = slice(q0 + re[i], q0 + re[j]), slice(k0 + span.start, k0 + span.stop)
                if reduce == "max":
                    values = self.log_weights(head, *band, batch)
                else:
                    values = self.probabilities(head, *band, batch)
                columns[:, span] = torch.segment_reduce(values, "max" if reduce == "max" else "sum", lengths=rows)
            found = torch.segment_reduce(columns.T.contiguous(), "max" if reduce == "max" else "sum", lengths=lengths).T
            cells.append(found.exp() if reduce == "max" else found / (lengths * rows[:, None]))
        return torch.cat(cells).cpu().numpy()

    @property
    def stats(self) -> RowStats:
        """Per-row statistics, computed once from q, k and lse (chunked) and kept (`row_stats` computes
        those of many layers at once)."""
        if self._stats is None:
            self._stats = self._row_stats()
        return self._stats

    def _row_stats(self) -> RowStats:
        """One chunked pass over the scores of the keys each chunk of rows may see (`masked_scores`):
        the log weights t = score - lse in place, p = exp(t), and from them every statistic (the
        entropy as -Σ p·t, with no log). Non-finite values are counted where they can exist: scores
        only when q and k do not bound them (`scores_are_finite`), weights only in chunks where some
        row's weights do not sum to a finite number (a NaN or Inf weight makes its row's sum so)."""
        B, Hq, Sq, _ = self.q.shape
        Hkv = self.k.shape[1]
        shape = (B, Hkv, Hq // Hkv, Sq)
        device = self.q.device
        lse = eager.safe_lse(self.kept_lse).view(shape)
        entropy, max_weight, first, focus, weight_sum = (torch.zeros(shape, device=device) for _ in range(5))
        past = self.shape[1] - Sq  # key index of query row 0
        argmax, bad_scores, bad_weights = (torch.zeros(shape, dtype=torch.long, device=device) for _ in range(3))
        allowed_any = torch.zeros(shape, dtype=torch.bool, device=device)
        count_scores = not scores_are_finite(self.q, self.k, self.scale)
        for rows, keys, scores, allowed in masked_scores(
            self.q, self.k, self.mask, self.scale, STATS_CHUNK_ELEMENTS, self.softcap
        ):
            if count_scores:
                bad_scores[..., rows] = (
                    torch.isnan(scores) | torch.isposinf(scores) | (torch.isneginf(scores) & allowed)
                ).sum(-1)
            t = scores.sub_(lse[..., rows].unsqueeze(-1))  # (B, Hkv, G, rows, keys) log weights, -inf where masked
            p = torch.exp(t)
            max_weight[..., rows], arg = p.max(-1)
            argmax[..., rows] = arg + keys.start
            weight_sum[..., rows] = sums = p.sum(-1)
            if keys.start == 0:
                first[..., rows] = p[..., 0]
            query = torch.arange(rows.start, rows.stop, device=device)[:, None] + past  # (rows, 1) key index
            key = torch.arange(keys.start, keys.stop, device=device)  # (keys,)
            positional = (key == 0) | (key == query) | (key == query - 1)  # (rows, keys): sink, itself, previous
            focus[..., rows] = p.masked_fill(positional, 0).amax(-1)
            allowed_any[..., rows] = allowed.any(-1)
            if not bool(torch.isfinite(sums).all()):
                bad_weights[..., rows] = ((~torch.isfinite(p)) & allowed).sum(-1)
            # masked keys: 0 · -inf = NaN, left out; a row with a NaN weight keeps NaN (unknown, not 0)
            entropy[..., rows] = torch.where(torch.isfinite(sums), p.mul_(t).nansum(-1).neg_(), sums)
        lse_flat = self.kept_lse.float()
        sink_weight = (
            torch.zeros_like(lse_flat)
            if self.sinks is None
            else torch.exp(self.sinks.float().view(1, Hq, 1) - eager.safe_lse(lse_flat))
        )
        return RowStats(
            entropy=entropy.view(B, Hq, Sq),
            max_weight=max_weight.view(B, Hq, Sq),
            argmax=argmax.view(B, Hq, Sq),
            first_token_mass=first.view(B, Hq, Sq),
            focus=focus.view(B, Hq, Sq),
            weight_sum=weight_sum.view(B, Hq, Sq),
            sink_weight=sink_weight,
            fully_masked=~allowed_any.view(B, Hq, Sq),
            nonfinite_scores=bad_scores.view(B, Hq, Sq),
            nonfinite_weights=bad_weights.view(B, Hq, Sq),
            nonfinite_output=nonfinite_counts(self.out),
        )


def row_stats(records: list[LayerRecord], step=None) -> None:
    """Compute and keep the row statistics (`LayerRecord.stats`) of every record that lacks them, in
    one buffer per statistic for all of them (`LayerBuffers`); `step(done, total)` after each record."""
    buffers = LayerBuffers(len(records))
    for i, rec in enumerate(records):
        if rec._stats is None:
            rec._stats = buffers.keep_fields(i, rec._row_stats())
        if step is not None:
            step(i + 1, len(records))


def nonfinite_counts(x: torch.Tensor) -> torch.Tensor:
    """The count of NaN/Inf values along the last dimension of `x` ``[..., rows, n]`` (int64, shaped
    ``[..., rows]``), tested a band of rows at a time, so the temporaries stay near
    `NONFINITE_CHUNK_ELEMENTS` elements whatever the size of `x` (logits ``[B, T, vocab]``). One
    min/max pass over `x` first (no temporaries: a NaN, +Inf or -Inf shows in its minimum or maximum)
    answers for the usual all-finite tensor."""
    if not x.numel() or bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
    counts = torch.empty(x.shape[:-1], dtype=torch.long, device=x.device)
    step = max(1, NONFINITE_CHUNK_ELEMENTS // max(1, x[..., :1, :].numel()))
    for start in range(0, x.shape[-2], step):
        rows = slice(start, start + step)
        counts[..., rows] = torch.count_nonzero(torch.isfinite(x[..., rows, :]).logical_not_(), dim=-1)
    return counts


def scores_are_finite(q: torch.Tensor, k: torch.Tensor, scale: float) -> bool:
    """Whether every score q·k·scale is surely finite, from q and k alone: |q·k| <= |q|·|k|
    (Cauchy-Schwarz), so finite rows whose largest norms multiply well inside float32's range
    cannot give a NaN or Inf score (soft-capping keeps a finite score finite). False when unsure."""
    if not q.numel() or not k.numel():
        return True
    bound = q.float().norm(dim=-1).amax() * k.float().norm(dim=-1).amax() * abs(scale)
    return bool(bound < 1e37)  # NaN compares False


@dataclass(frozen=True)
class LayerOutput:
    """One layer's attention output ``[B, Hq, Sq, D]`` and lse ``[B, Hq, Sq]`` (None when not kept)."""

    out: torch.Tensor
    lse: torch.Tensor | None


class OutputCapture:
    """A recorder that keeps each layer's attention output (and lse) only: what the comparisons read
    of the isolated pass and of a float32 reference, without the q, k and v they were computed from.
    Successive calls of a layer (a token at a time) are joined along the query rows."""

    def __init__(self, lse: bool = True):
        self.wants_lse = lse
        self._out: dict[int, list[torch.Tensor]] = {}
        self._lse: dict[int, list[torch.Tensor]] = {}

    def attention(self, layer: int, *, out, lse, **_) -> None:
        self._out.setdefault(layer, []).append(out)
        if self.wants_lse and lse is not None:
            self._lse.setdefault(layer, []).append(lse)

    def residual(self, layer: int, hidden: torch.Tensor) -> None:
        pass

    def layers(self) -> list[LayerOutput]:
        def joined(parts: list[torch.Tensor]) -> torch.Tensor:
            return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

        return [
            LayerOutput(joined(self._out[i]), joined(self._lse[i]) if i in self._lse else None)
            for i in range(len(self._out))
        ]


class Capture:
    """A recorder for `Transformer.forward`: one `LayerRecord` per layer.

    With ``append=True`` successive calls (incremental decoding) are gathered and joined along the
    query rows by `layers()`, with k/v the latest (longest) cache views, so the records cover the
    whole sequence. With ``count_nonfinite=False`` the residual stream's NaN/Inf are not counted (a forward whose
    records are only compared with another's attention outputs); with ``keep_residuals=True`` each
    record keeps its block's output (model comparison). Given `n_layers` (one forward, not
    ``append``), what the records keep of the forward (q, the output, the lse, the residual's counts
    and the residual; k and v are the cache's own tensors) is copied into one buffer per kind
    (`LayerBuffers`). With ``lse=False`` the records have no lse (None), and the attention function
    is told it need not compute it (a forward whose outputs alone are compared).
    """

    def __init__(
        self,
        append: bool = False,
        on_layer=None,
        count_nonfinite: bool = True,
        keep_residuals: bool = False,
        n_layers: int | None = None,
        lse: bool = True,
    ):
        self.records: dict[int, LayerRecord] = {}
        self.append = append
        self.on_layer = on_layer  # called with the layer index once its block has run
        self.count_nonfinite = count_nonfinite  # count the residual stream's NaN/Inf (the nan check's last stage)
        self.keep_residuals = keep_residuals
        self.wants_lse = lse  # False: records without lse (the backend may skip it)
        self._buffers = LayerBuffers(n_layers) if n_layers is not None and not append else None
        self._parts: dict[int, dict[str, list[torch.Tensor]]] = {}
        take_lse_source()  # a note left by an earlier call is not this forward's

    def _keep(self, kind: str, layer: int, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self._buffers is None else self._buffers.keep(kind, layer, tensor)

    def attention(self, layer: int, *, q, k, v, out, lse, mask, scale, softcap=None, sinks=None) -> None:
        q, out = self._keep("q", layer, q), self._keep("out", layer, out)
        lse = self._keep("lse", layer, lse) if self.wants_lse and lse is not None else None
        self.records[layer] = LayerRecord(
            layer, q, k, v, out, lse, mask, scale, softcap, sinks, lse_source=take_lse_source()
        )
        if self.append:
            parts = self._parts.setdefault(layer, {"q": [], "out": [], "lse": [], "residual": []})
            parts["q"].append(q)
            parts["out"].append(out)
            if lse is not None:
                parts["lse"].append(lse)

    def residual(self, layer: int, hidden: torch.Tensor) -> None:
        if self.count_nonfinite:
            bad = self._keep("residual_nonfinite", layer, nonfinite_counts(hidden))  # (B, Sq)
            self.records[layer].residual_nonfinite = bad
            if self.append:
                self._parts[layer]["residual"].append(bad)
        if self.keep_residuals:
            self.records[layer].residual = self._keep("residual", layer, hidden)
        if self.on_layer is not None:
            self.on_layer(layer)

    def layers(self) -> list[LayerRecord]:
        """The records in layer order (joined over the calls in append mode)."""
        records = [self.records[i] for i in range(len(self.records))]
        if not self.append:
            return records
        joined = []
        for rec in records:
            parts = self._parts[rec.layer]
            residual = torch.cat(parts["residual"], 1) if parts["residual"] else None
            lse = torch.cat(parts["lse"], 2) if parts["lse"] else None
            joined.append(
                LayerRecord(
                    rec.layer,
                    torch.cat(parts["q"], 2),
                    rec.k,
                    rec.v,
                    torch.cat(parts["out"], 2),
                    lse,
                    rec.mask,
                    rec.scale,
                    softcap=rec.softcap,
                    sinks=rec.sinks,
                    residual_nonfinite=residual,
                    lse_source=rec.lse_source,
                )
            )
        return joined
