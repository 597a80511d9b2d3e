"""The engine seam: what the inspector, the checks and the views need from a model.

An engine is a model that attnscope can run with any attention function and watch while it runs.
Two implement it: ``native`` (`attnscope.model.loader.LoadedModel`, our Llama-family model) and,
next, ``hf`` (any transformers causal LM, through its AttentionInterface). Nothing above this seam
knows which one it has:

- `Layout`: the sizes a view or a check needs (layers, query and kv heads, head dim, vocabulary,
  positions) and the special token ids;
- `Engine.forward`: logits for token ids, every attention call made through `attend` and shown to a
  recorder (`attnscope.model.llama.Recorder`), appending to a cache when one is given;
- `Engine.new_cache` / `Engine.decode`: incremental decoding, one token per step, through the cache;
  `token_by_token`: a prompt's tokens one at a time through the cache (the `full_vs_incremental`
  check), through an engine's optional ``forward_token_by_token`` when it has a faster order;
- `Engine.layer_masks`: the `MaskSpec` of every layer;
- `Engine.tokenizer`: text to ids and back (or None: prompts are ids).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from attnscope.backends import AttendFn
from attnscope.masks import MaskSpec


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


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def token_texts(self, ids: list[int]) -> list[str]: ...


class Engine(Protocol):
    """A model attnscope can run and watch (see the module docstring)."""

    engine: str  # "native" or "hf": which implementation runs the model
    name: str  # shown in reports: a sample model's name or the directory's
    path: Path | None
    tokenizer: Tokenizer | None
    # True when a token's results do not depend on the other tokens of the forward beyond what
    # attention lets through (no batched expert routing, no data-dependent kernel choice): the
    # causality check then asks for bit-identical outputs with the eager float32 backend
    batch_invariant: bool

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

    def forward(self, ids: torch.Tensor, attend: AttendFn, *, cache: Any = None, recorder: Any = None,
                mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of ids ``[B, T]`` that follow what `cache` holds; every attention call
        made through `attend` and shown to `recorder`; `mask` combined with every layer's own;
        `positions` ``[B, T]`` the rotary positions of padded rows."""

    def decode(self, logits: torch.Tensor, cache: Any, attend: AttendFn, max_new_tokens: int, *,
               mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy continuation ``[B, <= max_new_tokens]`` from a prefill's `logits`, one token per step."""


def token_by_token(engine: Engine, ids: torch.Tensor, attend: AttendFn, *, cache: Any, recorder: Any = None,
                   mask: MaskSpec | None = None, positions: torch.Tensor | None = None,
                   step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """What T forwards of one token each through `cache` give: the logits ``[B, T, vocab]`` and, layer
    by layer, the same calls shown to `recorder` in token order; `step(done, total)` as it goes,
    counting tokens × layers. Through the engine's own ``forward_token_by_token`` (same arguments)
    when it has one, which may interleave the layers in the order it computes fastest (the native
    engine: a layer at a time); else T one-token `Engine.forward` calls."""
    run = getattr(engine, "forward_token_by_token", None) or functools.partial(one_token_at_a_time, engine)
    return run(ids, attend, cache=cache, recorder=recorder, mask=mask, positions=positions, step=step)


def one_token_at_a_time(engine: Engine, ids: torch.Tensor, attend: AttendFn, *, cache: Any, recorder: Any = None,
                        mask: MaskSpec | None = None, positions: torch.Tensor | None = None,
                        step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`token_by_token` as T one-token `Engine.forward` calls, in token order."""
    T, n = ids.shape[1], engine.layout.n_layers
    logits = []
    for t in range(T):
        logits.append(engine.forward(ids[:, t:t + 1], attend, cache=cache, recorder=recorder, mask=mask,
                                     positions=None if positions is None else positions[:, t:t + 1]))
        if step is not None:
            step((t + 1) * n, T * n)
    return torch.cat(logits, dim=1)


def greedy(step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], logits: torch.Tensor,
           max_new_tokens: int, eos_token_ids: Sequence[int] = (), positions: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Greedy decoding from a prefill's `logits` ``[B, T, vocab]``: `step(ids [B, 1], positions [B, 1] or
    None)` runs one token through the engine's cache and returns its logits. `positions` are the
    prefill's rotary positions ``[B, T]`` (padded rows), if any. Returns the new ids
    ``[B, <= max_new_tokens]``; stops when every row produced an end-of-sequence token."""
    eos = torch.tensor(list(eos_token_ids), device=logits.device, dtype=torch.long)
    new = []
    for i in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        new.append(next_ids)
        if eos.numel() and bool(torch.isin(next_ids, eos).all()):
            break
        if i + 1 < max_new_tokens:
            logits = step(next_ids, None if positions is None else positions[:, -1:] + i + 1)  # (B, 1, vocab)
    return torch.cat(new, dim=1) if new else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)


def in_float32(module: torch.nn.Module, *args, **kwargs):
    """``module(*args, **kwargs)`` with its floating parameters and buffers upcast to float32 for this
    call (a float32 copy of each; the module keeps its own), through `torch.func.functional_call`:
    the float32 computation that a low-precision model rounds."""
    from torch.func import functional_call

    tensors = {name: t.float() if t.is_floating_point() else t
               for name, t in [*module.named_parameters(), *module.named_buffers()]}
    return functional_call(module, tensors, args, kwargs)
