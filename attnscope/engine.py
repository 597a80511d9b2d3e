"""The engine seam: what the inspector, the checks and the views need from a model.

An engine is a model that attnscope can run with any attention function and watch while it runs.
Two implement it: ``native`` (`attnscope.model.native.LoadedModel`, our Llama-family model) and
``hf`` (any transformers causal LM, through its AttentionInterface: `attnscope.hf.HFEngine`).
Nothing above this seam knows which one it has. This module holds the contracts, and the one loop
that runs over any engine:

- `Layout`: the sizes a view or a check needs (layers, query and kv heads, head dim, vocabulary,
  positions) and the special token ids;
- `Recorder`: what a forward shows of every attention call and of the residual stream;
- `Engine.forward`: logits for token ids, every attention call made through `attend` and shown to a
  recorder, appending to a cache when one is given;
- `Engine.new_cache` / `Engine.decode`: incremental decoding, one token per step, through the cache;
  `in_pieces`: a prompt through the cache in pieces of given sizes, chunks or single tokens (the
  `full_vs_incremental` check; `attnscope.inspector.incremental`), through an engine's optional
  ``forward_in_pieces`` when it has a faster order; `token_by_token`: pieces of one token;
- optional, for the calibrated checks: ``forward_isolated`` (every layer on the parallel forward's
  own input to it, in parallel, in pieces through a cache, and in float32) and
  ``forward_float32`` (the logits computed in float32); see `attnscope.inspector.run.Run`;
- optional: ``cache_prefix(cache, length, max_len)``, a new cache holding a copy of the first
  `length` positions of one (the causality check's window reruns; without it, a forward of those
  positions fills one);
- `Engine.layer_masks`: the `MaskSpec` of every layer;
- `Engine.tokenizer`: text to ids and back (or None: prompts are ids);
- `Progress`: the callback type of work that reports how far it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from attnscope.backends import AttendFn
from attnscope.masks import MaskSpec

# progress(done, total, description): how far a piece of work is (loading weights, a run's stages)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Layout:
    """The shape of a model as the inspector sees it."""

    model_type: str  # the config's model_type, e.g. "llama"
    n_layers: int
    n_heads: int  # query heads (Hq)
    n_kv_heads: int  # key/value heads (Hkv); query head h reads kv head h // group_size
    head_dim: int
    vocab_size: int
    max_positions: int  # positions the model can encode (prompt + continuation)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def group_size(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads


class Recorder(Protocol):
    """What the inspector sees of a forward pass (see `attnscope.inspector.capture.Capture`)."""

    wants_lse: bool  # False: the recorder compares outputs only, and the attention may skip the lse (lse=None)

    def attention(
        self,
        layer: int,
        *,
        q,
        k,
        v,
        out,
        lse,
        mask: MaskSpec,
        scale: float,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        """Each attention call: post-RoPE q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D] (cache included),
        the output [B, Hq, Sq, D], lse [B, Hq, Sq], the mask it used, and the features it used (logit
        soft-capping, sink logits [Hq]; see `attnscope.backends`)."""

    def residual(self, layer: int, hidden: torch.Tensor) -> None:
        """The residual stream [B, Sq, hidden] after each block."""


class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_texts(self, ids: list[int]) -> list[str]: ...


class Engine(Protocol):
    """A model attnscope can run and watch (see the module docstring)."""

    engine: str  # "native" or "hf": which implementation runs the model
    name: str  # shown in reports: a sample model's name or the directory's
    # True when a token's results do not depend on the other tokens of the forward beyond what
    # attention lets through (no batched expert routing, no data-dependent kernel choice): the
    # causality check then asks for bit-identical outputs with the eager float32 backend
    batch_invariant: bool

    @property
    def path(self) -> Path | None: ...  # the model's directory or file; None for a model built in memory
    @property
    def tokenizer(self) -> Tokenizer | None: ...
    @property
    def layout(self) -> Layout: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...

    def layer_masks(self) -> list[MaskSpec]:
        """The mask spec of each layer (bottom-right aligned, before any padding)."""

    def new_cache(self, batch: int, max_len: int) -> Any:
        """An empty KV cache for `batch` rows of up to `max_len` tokens."""

    def forward(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        cache: Any = None,
        recorder: Recorder | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of ids ``[B, T]`` that follow what `cache` holds; every attention call
        made through `attend` and shown to `recorder`; `mask` combined with every layer's own;
        `positions` ``[B, T]`` the rotary positions of padded rows."""

    def decode(
        self,
        logits: torch.Tensor,
        cache: Any,
        attend: AttendFn,
        max_new_tokens: int,
        *,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy continuation ``[B, <= max_new_tokens]`` from a prefill's `logits`, one token per step."""


def attention_features(engine: Engine) -> list[str]:
    """The optional attention features (`attnscope.backends.FEATURES`: soft-capping, sinks) that the
    model's layers use, found as the model says them: one forward of one token through a function
    that notes the keywords each attention call passes (and computes with the eager reference)."""
    from attnscope.backends.eager import attend as eager

    used: dict[str, None] = {}

    def note(q, k, v, mask, scale, *, need_lse=True, softcap=None, sinks=None):
        for name, value in (("softcap", softcap), ("sinks", sinks)):
            if value is not None:
                used[name] = None
        return eager(q, k, v, mask, scale, need_lse=need_lse, softcap=softcap, sinks=sinks)

    with torch.inference_mode():
        engine.forward(torch.zeros(1, 1, dtype=torch.long, device=engine.device), note)
    return list(used)


def in_pieces(
    engine: Engine,
    ids: torch.Tensor,
    attend: AttendFn,
    *,
    pieces: Sequence[int],
    cache: Any,
    recorder: Recorder | None = None,
    mask: MaskSpec | None = None,
    positions: torch.Tensor | None = None,
    step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """What one forward per piece through `cache` gives, the i-th of ``pieces[i]`` tokens (the sizes add
    up to T): the logits ``[B, T, vocab]`` and, layer by layer, the same calls shown to `recorder` in
    piece order; `step(done, total)` as it goes, counting tokens × layers. Through the engine's own
    ``forward_in_pieces`` (same arguments) when it has one, which may interleave the layers in the
    order it computes fastest (the native engine: a layer at a time); else its
    ``forward_token_by_token`` when every piece is one token; else one `Engine.forward` a piece. An
    attend function that knows the layer by counting its calls (``counts_calls``, as
    `attnscope.inspector.interventions.intervene` makes) gets one `Engine.forward` a piece, layers in
    order, whatever order the engine prefers."""
    if sum(pieces) != ids.shape[1]:
        raise ValueError(f"pieces of {sum(pieces)} tokens for {ids.shape[1]} tokens")
    kwargs = dict(cache=cache, recorder=recorder, mask=mask, positions=positions, step=step)
    if getattr(attend, "counts_calls", False):
        return one_piece_at_a_time(engine, ids, attend, pieces=pieces, **kwargs)
    own = getattr(engine, "forward_in_pieces", None)
    if own is not None:
        return own(ids, attend, pieces=pieces, **kwargs)
    by_token = getattr(engine, "forward_token_by_token", None)
    if by_token is not None and all(size == 1 for size in pieces):
        return by_token(ids, attend, **kwargs)
    return one_piece_at_a_time(engine, ids, attend, pieces=pieces, **kwargs)


def token_by_token(
    engine: Engine,
    ids: torch.Tensor,
    attend: AttendFn,
    *,
    cache: Any,
    recorder: Recorder | None = None,
    mask: MaskSpec | None = None,
    positions: torch.Tensor | None = None,
    step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """What T forwards of one token each through `cache` give: `in_pieces` with pieces of one token."""
    pieces = [1] * ids.shape[1]
    return in_pieces(
        engine, ids, attend, pieces=pieces, cache=cache, recorder=recorder, mask=mask, positions=positions, step=step
    )


def one_piece_at_a_time(
    engine: Engine,
    ids: torch.Tensor,
    attend: AttendFn,
    *,
    pieces: Sequence[int],
    cache: Any,
    recorder: Recorder | None = None,
    mask: MaskSpec | None = None,
    positions: torch.Tensor | None = None,
    step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """`in_pieces` as one `Engine.forward` a piece, in order: the engine's own cache takes each piece
    after the positions it holds (bottom-right causal alignment, the piece's rotary offsets)."""
    T, n = ids.shape[1], engine.layout.n_layers
    logits, start = [], 0
    for size in pieces:
        end = start + size
        logits.append(
            engine.forward(
                ids[:, start:end],
                attend,
                cache=cache,
                recorder=recorder,
                mask=mask,
                positions=None if positions is None else positions[:, start:end],
            )
        )
        start = end
        if step is not None:
            step(end * n, T * n)
    return torch.cat(logits, dim=1)
