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
- `Engine.layer_masks`: the `MaskSpec` of every layer;
- `Engine.tokenizer`: text to ids and back (or None: prompts are ids).
"""

from __future__ import annotations

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

    name: str  # shown in reports: a sample model's name or the directory's
    path: Path | None
    tokenizer: Tokenizer | None

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
