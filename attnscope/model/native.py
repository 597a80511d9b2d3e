"""The native engine: our Llama-family `Transformer` as an `attnscope.engine.Engine` (`LoadedModel`),
and the loading of a Hugging Face model directory into it (`load_native`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from attnscope.backends import AttendFn
from attnscope.engine import Layout, Progress
from attnscope.errors import ConfigError
from attnscope.masks import MaskSpec
from attnscope.model.checkpoint import load_state_dict, read_config, weight_files
from attnscope.model.config import ModelConfig
from attnscope.model.llama import KVCache, Transformer
from attnscope.model.memory import require_float32_copy_fits, require_kv_cache_fits, require_model_fits
from attnscope.model.tokenizer import Tokenizer


def config_layout(c: ModelConfig) -> Layout:
    """The `Layout` of a native model's config."""
    eos = c.eos_token_id if isinstance(c.eos_token_id, list) else [] if c.eos_token_id is None else [c.eos_token_id]
    return Layout(
        model_type=c.model_type,
        n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        max_positions=c.max_position_embeddings,
        bos_token_id=c.bos_token_id if isinstance(c.bos_token_id, int) else None,
        eos_token_ids=tuple(eos),
    )


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Modules built without initializing their parameters: the ``torch.nn.init`` calls of their
    ``reset_parameters`` return the tensor untouched. (On the meta device they would cost nothing but
    time: ``normal_`` there runs torch's Python reference, which imports the compiler stack, ~1 s.)
    A torch function mode is per thread, so a model built by another thread is unaffected."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


class LoadedModel:
    """The native engine (`attnscope.engine.Engine`): our Llama-family network, its tokenizer (or
    None), and where it came from."""

    engine = "native"
    batch_invariant = True  # our network computes every token with the same kernels whatever the batch

    def __init__(self, net: Transformer, tokenizer: Tokenizer | None, name: str, path: Path):
        self.net = net
        self.tokenizer = tokenizer
        self.name = name
        self.path = path

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def dtype(self) -> torch.dtype:
        return self.net.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.net.embed_tokens.weight.device

    @property
    def layout(self) -> Layout:
        return config_layout(self.config)

    def layer_masks(self) -> list[MaskSpec]:
        return self.net.masks

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        require_kv_cache_fits(self.layout, batch, max_len, self.dtype, self.device)  # before allocating it
        return self.net.new_cache(batch, max_len)

    def cache_prefix(self, cache: KVCache, length: int, max_len: int) -> KVCache:
        """A new cache of `max_len` positions holding the first `length` positions of `cache` (a copy),
        so that a rerun of the positions after them need not compute these again."""
        prefix = self.new_cache(cache.k[0].shape[0], max_len)
        for mine, theirs in zip(prefix.k + prefix.v, cache.k + cache.v, strict=True):
            mine[:, :, :length] = theirs[:, :, :length]
        prefix.length = length
        return prefix

    def forward(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        cache: KVCache | None = None,
        recorder=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.net(ids, cache, recorder=recorder, attend=attend, mask=mask, positions=positions)

    def forward_in_pieces(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        pieces: Sequence[int],
        cache: KVCache,
        recorder=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """`attnscope.engine.in_pieces`, a layer at a time (`Transformer.forward_in_pieces`)."""
        return self.net.forward_in_pieces(ids, cache, pieces, recorder, attend, mask, positions, step)

    def forward_isolated(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        cache: KVCache,
        parallel,
        incremental,
        reference=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step: Callable[[int, int], None] | None = None,
        pieces: Sequence[int] | None = None,
    ) -> None:
        """Every layer's attention on the parallel forward's own input to it, in parallel, in `pieces`
        (default: a token at a time) through `cache` and in float32 (`Transformer.forward_isolated`)."""
        self.net.forward_isolated(
            ids,
            cache,
            parallel=parallel,
            incremental=incremental,
            reference=reference,
            attend=attend,
            mask=mask,
            positions=positions,
            step=step,
            pieces=pieces,
        )

    def forward_float32(
        self, ids: torch.Tensor, *, recorder=None, mask: MaskSpec | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of `forward` computed in float32 with the eager attention (`Transformer.forward_float32`,
        a module at a time); a `MemoryError` when the largest module's float32 copy (the embedding, as
        a rule) cannot fit beside the model."""
        net = self.net
        pieces = [net.embed_tokens, net.lm_head, *net.layers]  # what is upcast at once, one at a time
        require_float32_copy_fits(max(pieces, key=lambda m: sum(p.numel() for p in m.parameters())), self.device)
        return self.net.forward_float32(ids, recorder=recorder, mask=mask, positions=positions)

    def decode(
        self,
        logits: torch.Tensor,
        cache: KVCache,
        attend: AttendFn,
        max_new_tokens: int,
        *,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.net.decode(
            logits,
            cache,
            max_new_tokens,
            list(self.layout.eos_token_ids) or None,
            attend=attend,
            mask=mask,
            positions=positions,
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LoadedModel({self.name!r}, {c.model_type}, layers={c.num_hidden_layers}, "
            f"heads={c.num_attention_heads}/{c.num_key_value_heads}, dtype={self.dtype}, "
            f"device={self.device})"
        )


def load_native(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    *,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """A model directory as a `LoadedModel`: config.json checked, its size checked against the memory
    available before anything is allocated, the network built on the meta device and the weights
    loaded into it (`attnscope.model.checkpoint.load_state_dict`), then moved to `device`."""
    config = read_config(path)
    require_model_fits(config, dtype, device)  # from the config alone, before anything is allocated
    tokenizer = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    files = weight_files(path, allow_pickle)
    with torch.device("meta"), _SkipInit():  # shapes only: every parameter is about to be loaded
        net = Transformer(config).to(dtype)
    load_state_dict(net, files, progress)
    net = net.to(device).eval()
    return LoadedModel(net, tokenizer, path.name, path)
