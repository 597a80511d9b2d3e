"""The ``hf`` engine: any Hugging Face transformers causal LM, watched through its AttentionInterface.

No code per architecture. attnscope registers one attention function, ``"attnscope"``, in
transformers' ``AttentionInterface`` (and a mask function of the same name that always materializes
the boolean mask). While attnscope runs a forward pass, the model's attention implementation is
switched to it and switched back after; every attention layer then calls it with its own query, key
and value (after the model's projections, q/k norms and RoPE), the mask and the module. The function:

- derives the layer's `MaskSpec` from what the model says (causal, ``sliding_window``, the padding
  attnscope asked for) and checks it against the mask tensor the model built: where they agree the
  spec is used, so the Mask views, ``masked_rows`` and ``causality`` mean what they mean for native
  models; where they do not, the model's tensor is used as ``custom`` and the report says so;
- runs the selected backend with the layer's features (logit soft-capping ``softcap``, attention
  sinks ``s_aux``), refusing a backend that lacks one (`attnscope.backends.require_features`), and
  refusing what no backend computes (attention dropout, additive biases);
- shows the recorder q, k, v, the output and the lse, and the residual stream after each decoder
  layer (forward hooks), like the native engine does.

K and V are passed as the model gives them, ``[B, Hkv, Sk, D]``: never repeated for GQA.

Devices: a model dispatched with ``device_map`` (layers on several devices) runs as it is: each
layer's attention runs on that layer's device, and the weights and the KV cache stay where the
model put them. What attnscope keeps of a layer (q, k, v, output, lse, the residual's NaN counts)
is copied to the engine's device, the device of the input embeddings, so that the checks and views
compare tensors on one device; logits come back there too.

Loading: a model directory (`load`), or a GGUF file (`load_gguf`) of any architecture transformers'
GGUF loader reads (`gguf_architectures`), dequantized by transformers; the tokenizer is then the one
transformers builds from the file's metadata. Both check sizes and memory before transformers
allocates, and refuse a model any of whose tensors transformers initialized at random.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnscope import masks
from attnscope.backends import AttendFn, require_features
from attnscope.engine import Layout
from attnscope.errors import ConfigError, LoadError, UnsupportedFeature, UserError
from attnscope.masks import MaskSpec
from attnscope.model.compute import greedy, in_float32

if TYPE_CHECKING:
    from attnscope.model.gguf import GGUFFile

IMPLEMENTATION = "attnscope"
EXTRA = 'pip install "attnscope[hf]"'

_active: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("attnscope_hf_call", default=None)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(f"the hf engine needs transformers: {EXTRA}") from None
    return transformers


@dataclass
class _Call:
    """One forward pass in progress: what the registered attention function needs."""

    engine: HFEngine
    attend: AttendFn
    recorder: Any
    padding: MaskSpec | None
    layers_seen: int = 0
    specs: dict = field(default_factory=dict)  # (id of the model's mask, window, Sq, Sk) -> MaskSpec
    layer_specs: dict = field(default_factory=dict)  # layer -> the MaskSpec it ran with


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered in transformers' AttentionInterface (see the module docstring)."""
    call = _active.get()
    if call is None:  # the model was switched to "attnscope" outside attnscope: behave like sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    engine = call.engine
    layer = getattr(module, "layer_idx", None)
    layer = call.layers_seen if layer is None else int(layer)
    call.layers_seen += 1
    where = f"{engine.layout.model_type} layer {layer}"
    if dropout:
        raise UnsupportedFeature(
            f"{where} applies attention dropout {dropout}: the model is in training mode (call model.eval())"
        )
    for name in ("position_bias", "alibi", "attn_bias"):
        if kwargs.get(name) is not None:
            raise UnsupportedFeature(
                f"{where} passes an additive attention bias ({name}), which attnscope does not implement"
            )
    Sq, Sk = query.shape[2], key.shape[2]
    spec = call.layer_specs[layer] = _layer_spec(call, module, kwargs, attention_mask, Sq, Sk, where)
    features = require_features(call.attend, {"softcap": kwargs.get("softcap"), "sinks": kwargs.get("s_aux")}, where)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    need_lse = call.recorder is not None and call.recorder.wants_lse
    out, lse = call.attend(query, key, value, spec, scale, need_lse=need_lse, **features)
    if call.recorder is not None:
        dev = engine.device
        sinks = features.get("sinks")
        call.recorder.attention(
            layer,
            q=query.to(dev),
            k=key.to(dev),
            v=value.to(dev),
            out=out.to(dev),
            lse=None if lse is None else lse.to(dev),
            mask=spec,
            scale=scale,
            softcap=features.get("softcap"),
            sinks=None if sinks is None else sinks.detach().float().to(dev),
        )
    return out.transpose(1, 2).contiguous(), None  # (B, Sq, Hq, D), as transformers expects


def _layer_spec(call: _Call, module, kwargs, attention_mask, Sq: int, Sk: int, where: str) -> MaskSpec:
    """The layer's mask as a spec: causal, its sliding window and the padding, when that is what the
    model's own mask tensor says; else that tensor, as ``custom``."""
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    spec = masks.causal() & masks.sliding_window(int(window)) if window else masks.causal()
    if call.padding is not None:
        spec = spec & call.padding
    if attention_mask is None:  # the model built no mask: plain causal attention, all keys real
        return spec
    key = (id(attention_mask), window, Sq, Sk)
    if key not in call.specs:
        given = _allowed(attention_mask[..., -Sq:, :Sk], where)  # (B|1, 1|H, Sq, Sk) bool
        expected = spec.dense(Sq, Sk, given.device)
        if expected.shape[-2:] == given.shape[-2:] and bool((expected == given).all()):
            call.specs[key] = spec
        else:
            call.specs[key] = masks.custom(
                given.to(call.engine.device), name=f"custom (the mask {call.engine.layout.model_type} built)"
            )
    return call.specs[key]


def _allowed(mask: torch.Tensor, where: str) -> torch.Tensor:
    """A mask tensor as bool (True = may attend): a boolean mask as it is, an additive one (0 where
    allowed, a large negative number where not) by its zeros; any other value is a bias."""
    if mask.dtype == torch.bool:
        return mask
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if not bool(((mask == 0) | blocked).all()):
        raise UnsupportedFeature(f"{where} adds an attention bias to its scores, which attnscope does not implement")
    return ~blocked


def _bool_mask(*args, **kwargs):
    """transformers' sdpa mask, never skipped: the attention function always sees the mask."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register the ``"attnscope"`` attention and mask functions with transformers (idempotent)."""
    transformers = _transformers()
    from transformers.masking_utils import AttentionMaskInterface

    transformers.AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _bool_mask)


def _decoder_layers(model, n_layers: int) -> torch.nn.ModuleList | None:
    """The model's list of decoder layers: the first ModuleList of `n_layers` modules."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    return None


class HFTokenizer:
    """A transformers tokenizer as an `attnscope.engine.Tokenizer` (special tokens as the model's own
    tokenizer adds them)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self._tok.decode([i], skip_special_tokens=False) for i in ids]


class HFEngine:
    """The hf engine (`attnscope.engine.Engine`) over a loaded transformers causal LM."""

    # transformers' kernels are not promised to be batch invariant (mixture-of-experts layers group
    # tokens per expert, so a later token changes an earlier one's matmul shapes): the causality check
    # compares within the tolerance instead of bit for bit
    batch_invariant = False
    engine = "hf"

    def __init__(self, model, tokenizer=None, name: str | None = None, path: Path | None = None):
        if not callable(getattr(model, "set_attn_implementation", None)) or not hasattr(model, "config"):
            raise UserError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
        if not model._can_set_attn_implementation():
            raise UnsupportedFeature(
                f"{type(model).__name__} does not route its attention through transformers' "
                "AttentionInterface, so attnscope cannot watch it"
            )
        register()
        self.net = model  # the transformers module (as a native engine's `net` is its Transformer)
        self.tokenizer = tokenizer
        self.path = path
        self.name = name or Path(str(getattr(model, "name_or_path", "") or type(model).__name__)).name
        self._layout = _layout(model)
        self._layers = _decoder_layers(model, self._layout.n_layers)
        self._masks = _config_masks(model.config.get_text_config(), self._layout.n_layers)
        # a tensor-parallel model: which global heads this rank holds (`attnscope.distributed`)
        from attnscope.distributed import head_shards

        lay = self._layout
        self.shards = head_shards(model, lay.n_layers, lay.n_heads, lay.n_kv_heads, lay.head_dim)
        # the cache's keyword: `cache` in newer transformers, `past_key_values` before
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def device(self) -> torch.device:
        return self.net.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.get_input_embeddings().weight.dtype

    def layer_masks(self) -> list[MaskSpec]:
        """Each layer's mask: from the config until a forward ran, then what the model's layers said."""
        return list(self._masks)

    def new_cache(self, batch: int, max_len: int):
        from transformers import DynamicCache

        from attnscope.model.memory import require_kv_cache_fits

        require_kv_cache_fits(self.layout, batch, max_len, self.dtype, self.device)
        # without a config every layer keeps all its keys (a sliding layer's window is in its mask), so
        # key i is position i in every layer, as the mask specs assume
        return DynamicCache()

    def forward(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        cache=None,
        recorder=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._forward(ids, attend, self.net, cache=cache, recorder=recorder, mask=mask, positions=positions)

    def forward_float32(
        self, ids: torch.Tensor, *, recorder=None, mask: MaskSpec | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of `forward` computed in float32 (the weights upcast for this call,
        `attnscope.model.compute.in_float32`) with the eager attention; a `MemoryError` when a float32 copy
        of the weights cannot fit beside the model."""
        from attnscope.backends.eager import attend as eager_attend
        from attnscope.model.memory import require_float32_copy_fits

        require_float32_copy_fits(self.net, self.device)
        return self._forward(
            ids,
            eager_attend,
            functools.partial(in_float32, self.net),
            recorder=recorder,
            mask=mask,
            positions=positions,
        )

    def forward_isolated(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        *,
        cache,
        parallel,
        incremental,
        reference=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step=None,
        pieces: Sequence[int] | None = None,
    ) -> bool:
        """Each decoder layer's attention on the parallel forward's own input to that layer (see
        `attnscope.model.llama.Transformer.forward_isolated`): one parallel forward keeps every decoder
        layer's input (forward pre-hooks) and shows its attention to `parallel`; each layer then runs
        in float32 on its input (`in_float32`, eager attention) for `reference`; then one forward a piece
        (`pieces`: chunks or single tokens; default: one token a piece) through `cache`, the model's own,
        in which a pre-hook replaces every decoder layer's input by the parallel one at that piece's
        positions, for `incremental`. Returns False (having run nothing) when the
        model's decoder layers cannot be found."""
        if self._layers is None:
            return False
        from attnscope.backends.eager import attend as eager_attend

        inputs: dict[int, tuple[tuple, dict]] = {}  # layer -> (args, kwargs) of its parallel call

        def keep(i):
            def hook(module, args, kwargs):
                inputs[i] = (args, kwargs)

            return hook

        with _hooks(self._layers, keep):
            self.forward(ids, attend, recorder=parallel, mask=mask, positions=positions)
        if reference is not None:
            for i, layer in enumerate(self._layers):
                args, kwargs = inputs[i]
                with self._watching(_Call(self, eager_attend, reference, mask)), torch.no_grad():
                    in_float32(layer, *_upcast(args), **_upcast(kwargs))
        piece = [0, 0]  # the positions of the piece being run: start, end

        def replace(i):
            def hook(module, args, kwargs):
                given_args, given_kwargs = inputs[i]
                s, e = piece
                if args:
                    return (given_args[0][:, s:e], *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": given_kwargs["hidden_states"][:, s:e]}

            return hook

        T, n = ids.shape[1], self.layout.n_layers
        with _hooks(self._layers, replace):
            start = 0
            for size in [1] * T if pieces is None else pieces:
                piece[:] = [start, start + size]
                self.forward(
                    ids[:, start : start + size],
                    attend,
                    cache=cache,
                    recorder=incremental,
                    mask=mask,
                    positions=None if positions is None else positions[:, start : start + size],
                )
                start += size
                if step is not None:
                    step(start * n, T * n)
        return True

    def _forward(
        self,
        ids: torch.Tensor,
        attend: AttendFn,
        call_model,
        *,
        cache=None,
        recorder=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward`, the model called through `call_model` (the model itself, or its float32 call)."""
        if self.net.training:
            raise UserError("the model is in training mode (dropout would make every run differ): call model.eval()")
        B, T = ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        call = _Call(self, attend, recorder, mask)
        kwargs = {"attention_mask": _key_mask(mask, B, past + T, self.device)}
        if positions is not None:
            kwargs["position_ids"] = positions.to(self.device)
        with self._watching(call), torch.no_grad():
            out = call_model(
                input_ids=ids.to(self.device), use_cache=cache is not None, **{self._cache_kw: cache}, **kwargs
            )
        if call.layers_seen == 0:
            raise UnsupportedFeature(
                f"{type(self.net).__name__} ran without calling its attention through "
                "transformers' AttentionInterface, so attnscope saw nothing"
            )
        return out.logits.to(self.device)

    def decode(
        self,
        logits: torch.Tensor,
        cache,
        attend: AttendFn,
        max_new_tokens: int,
        *,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        def step(ids, pos):
            return self.forward(ids, attend, cache=cache, mask=mask, positions=pos)

        return greedy(step, logits, max_new_tokens, self.layout.eos_token_ids, positions)

    @contextmanager
    def _watching(self, call: _Call) -> Iterator[None]:
        """The model's attention switched to attnscope's function, and hooks on its decoder layers, for
        the duration of one forward; everything restored after."""
        if self.shards is not None and call.recorder is not None:  # tensor parallel: record every head
            call.recorder = self.shards.gathering(call.recorder)
        before = self.net.config._attn_implementation
        self.net.set_attn_implementation(IMPLEMENTATION)
        token = _active.set(call)
        hooks = []
        if call.recorder is not None and self._layers is not None:
            for i, layer in enumerate(self._layers):
                hooks.append(layer.register_forward_hook(self._residual_hook(call, i)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            _active.reset(token)
            self.net.set_attn_implementation(before)
        if call.padding is None and len(call.layer_specs) == self.layout.n_layers:
            self._masks = [call.layer_specs[i] for i in range(self.layout.n_layers)]  # what the layers said

    def _residual_hook(self, call: _Call, index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            call.recorder.residual(index, hidden.to(self.device))

        return hook

    def __repr__(self) -> str:
        lay = self.layout
        return (
            f"HFEngine({self.name!r}, {lay.model_type}, layers={lay.n_layers}, heads={lay.n_heads}/"
            f"{lay.n_kv_heads}, dtype={self.dtype}, device={self.device})"
        )


@contextmanager
def _hooks(layers: torch.nn.ModuleList, make_hook) -> Iterator[None]:
    """``make_hook(i)`` registered as a forward pre-hook (with kwargs) on each layer i, for the duration."""
    handles = [layer.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _upcast(value):
    """Floating tensors in `value` (a tensor, or tuples, lists and dicts of them) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_upcast(v) for v in value)
    if isinstance(value, dict):
        return {k: _upcast(v) for k, v in value.items()}
    return value


def _key_mask(padding: MaskSpec | None, batch: int, k_len: int, device) -> torch.Tensor | None:
    """transformers' 2-D attention mask ``[B, k_len]`` (1 = a real token) of a padding spec."""
    if padding is None:
        return None
    if not isinstance(padding, masks.Padding):
        raise UserError(f"the hf engine takes padding masks only, got {padding!r}")
    rows = padding.dense(k_len, k_len, device)[:, 0, -1, :]  # (B, k_len): the keys of the last position
    return rows.expand(batch, k_len).long()


def _layout(model) -> Layout:
    c = model.config.get_text_config()
    n_heads = int(c.num_attention_heads)
    n_kv = int(getattr(c, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = c.eos_token_id if eos is None else eos
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    bos = getattr(c, "bos_token_id", None)
    return Layout(
        model_type=str(c.model_type),
        n_layers=int(c.num_hidden_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=int(c.vocab_size),
        max_positions=int(getattr(c, "max_position_embeddings", None) or 1 << 20),
        bos_token_id=bos if isinstance(bos, int) else None,
        eos_token_ids=tuple(int(e) for e in eos),
    )


def _config_masks(c, n_layers: int) -> list[MaskSpec]:
    """Each layer's mask as the config describes it (``layer_types``, ``sliding_window``)."""
    types = list(getattr(c, "layer_types", None) or [])
    window = getattr(c, "sliding_window", None)
    if not types:
        sliding = window is not None and getattr(c, "use_sliding_window", True) is not False
        types = ["sliding_attention" if sliding else "full_attention"] * n_layers
    chunk = getattr(c, "attention_chunk_size", None)
    out = []
    for kind in types[:n_layers]:
        if kind == "sliding_attention" and window:
            out.append(masks.causal() & masks.sliding_window(_positive("sliding_window", window)))
        elif kind == "chunked_attention" and chunk:
            out.append(masks.causal() & masks.chunked(_positive("attention_chunk_size", chunk)))
        else:
            out.append(masks.causal())
    return out


def _positive(name: str, value) -> int:
    """A config's window or chunk size; a ConfigError unless it is an integer >= 1."""
    if not _is_positive_int(value):
        raise ConfigError(f"the model's config sets {name} = {value!r}: it must be an integer >= 1")
    return value


def _is_positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1  # bools are not sizes here


def from_transformers(model, tokenizer=None) -> HFEngine:
    """Wrap a loaded transformers causal LM (any dtype, any device, ``device_map`` included) so that
    attnscope can run it: ``attnscope.Scope(attnscope.from_transformers(model, tok)).run("...")``.

    Args:
        model: a ``PreTrainedModel`` in eval mode whose attention goes through the AttentionInterface
            (every current transformers architecture).
        tokenizer: its tokenizer; None reads ``tokenizer.json`` from ``model.name_or_path`` when that is
            a directory, else prompts must be token ids.
    """
    _transformers()
    if tokenizer is not None:
        tokenizer = HFTokenizer(tokenizer)
    else:
        where = Path(str(getattr(model, "name_or_path", "") or ""))
        if str(where) and (where / "tokenizer.json").is_file():
            from attnscope.model.tokenizer import Tokenizer

            tokenizer = Tokenizer(where)
    return HFEngine(model, tokenizer)


def load(path: Path, dtype: torch.dtype, device: torch.device, *, allow_pickle: bool = False) -> HFEngine:
    """A model directory through transformers' ``AutoModelForCausalLM`` (never with remote code).

    Before anything is allocated: the weights must cover every layer that config.json describes, and
    their size in `dtype` must fit in the memory available. After: every tensor of the model must have
    come from the files (attnscope never runs weights that transformers initialized at random)."""
    transformers = _transformers()
    from attnscope.model.checkpoint import weight_files, weights_summary
    from attnscope.model.tokenizer import Tokenizer

    files = weight_files(path, allow_pickle)
    _quiet(transformers)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # transformers' config classes raise many kinds; all mean a bad config.json
        raise LoadError(f"{path / 'config.json'}: transformers cannot read it: {_reason(exc)}") from None
    numel, layers_in_files = weights_summary(files)
    _require_fits(transformers, config, numel, layers_in_files, dtype, device, path / "config.json", path)
    model = _pretrained(
        transformers, path, path, dtype, config=config, use_safetensors=files[0].suffix == ".safetensors"
    )
    tokenizer = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    return HFEngine(model.to(device).eval(), tokenizer, name=path.name, path=path)


# ---- GGUF files ----------------------------------------------------------------------------------------

# general.architecture of GGUF files that transformers lists under another spelling (its GGUF loader,
# transformers.modeling_gguf_pytorch_utils, renames them)
_GGUF_SPELLINGS = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gpt_oss": "gpt-oss", "minimax_m2": "minimax-m2"}
# architectures transformers reads from GGUF that are no causal LM with attention to watch
_NOT_WATCHABLE = ("t5", "t5encoder", "umt5", "mamba")


def gguf_architectures() -> tuple[str, ...]:
    """The GGUF architectures (``general.architecture``, as llama.cpp names them) that the installed
    transformers loads as a causal LM with attention; () without transformers."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return ()
    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:  # the newer loader of transformers 5.x (weights kept in GGUF blocks), for the architectures it lists
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except (ImportError, AttributeError):
        pass
    return tuple(sorted({_GGUF_SPELLINGS.get(n, n) for n in names} - set(_NOT_WATCHABLE)))


def load_gguf(file: GGUFFile, dtype: torch.dtype, device: torch.device) -> HFEngine:
    """A GGUF file (its metadata read by `attnscope.model.gguf.GGUFFile`) through transformers:
    ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``, every tensor dequantized to
    `dtype`, and its tokenizer from the ``tokenizer.ggml.*`` metadata as transformers builds it.

    Before anything is allocated, as for a directory: the architecture must be one transformers reads,
    the tensors must cover every layer that the metadata describes, and the model in `dtype` must fit
    in the memory available. After: every tensor of the model must have come from the file."""
    import re

    transformers = _transformers()
    path: Path = file.path
    arch = file.architecture
    readable = gguf_architectures()
    if arch not in readable:
        from attnscope.model.config import show

        raise ConfigError(
            f"{path}: transformers {transformers.__version__} does not read GGUF architecture {show(arch)} "
            f"(it reads: {', '.join(readable)})"
        )
    _quiet(transformers)
    source = {"gguf_file": path.name}
    try:
        config = transformers.AutoConfig.from_pretrained(path.parent, trust_remote_code=False, **source)
    except Exception as exc:  # idem: metadata transformers cannot turn into a config
        raise LoadError(f"{path}: transformers cannot read its metadata: {_reason(exc)}") from None
    numel, top = 0, -1
    for name, (_, shape, _) in file.tensors.items():
        numel += math.prod(shape)
        found = re.match(r"blk\.(\d+)\.", name)
        if found:
            top = max(top, int(found.group(1)))
    _require_fits(transformers, config, numel, top + 1 if top >= 0 else None, dtype, device, path, path)
    options = {}
    if hasattr(transformers, "GgufConfig"):  # transformers 5.x may keep weights in GGUF blocks: unpack them all
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    with _no_gguf_progress():
        model = _pretrained(transformers, path, path.parent, dtype, config=config, **source, **options)
    tokenizer = None
    if file.get("tokenizer.ggml.tokens") is not None:
        from attnscope.model.gguf_tokenizer import validate_vocabulary

        validate_vocabulary(path, file.metadata)  # what transformers would trip over, as one line
        try:
            tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(path.parent, **source))
        except Exception as exc:  # idem: a vocabulary transformers cannot build a tokenizer from
            raise LoadError(f"{path}: transformers cannot build its tokenizer: {_reason(exc)}") from None
    return HFEngine(model.to(device).eval(), tokenizer, name=path.name.removesuffix(".gguf"), path=path)


@contextmanager
def _no_gguf_progress() -> Iterator[None]:
    """transformers' GGUF loader without its progress bar (a `tqdm.auto` bar on stderr that
    ``disable_progress_bar`` does not reach)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as module
    except ImportError:
        yield
        return
    bar = getattr(module, "tqdm", None)
    if bar is None:
        yield
        return
    module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


# ---- shared by directories and GGUF files ---------------------------------------------------------------


def _require_fits(
    transformers, config, numel: int, layers_in_files: int | None, dtype, device, where: Path, path: Path
) -> None:
    """Before transformers allocates anything: the config's sizes are sane (`where` names the file
    they come from), its layers are all in the weights (`numel` values, `layers_in_files` layers), and
    the model in `dtype` fits in the memory available."""
    from attnscope.model import memory

    text = config.get_text_config()
    _validate_sizes(text, where)
    layers = getattr(text, "num_hidden_layers", None)
    if layers_in_files is not None and layers is not None and layers != layers_in_files:
        # more layers in the weights than the config describes: transformers would drop the rest unseen
        raise LoadError(f"{where} describes {layers:,} layers but the weights hold {layers_in_files}")
    memory.require_weights_fit(max(numel, _parameter_count(transformers, config, path)), dtype, device, path)


def _pretrained(transformers, path: Path, source: Path, dtype: torch.dtype, **options):
    """``AutoModelForCausalLM.from_pretrained(source, ...)`` (never with remote code); a LoadError naming
    `path` when it fails or when any tensor of the model was not in the files."""
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=False, output_loading_info=True, **options
        )
    except Exception as exc:  # transformers raises many kinds; all mean a model it cannot build from these files
        raise LoadError(f"{path}: transformers cannot load it: {_reason(exc)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise LoadError(
            f"{path}: the weights lack {len(missing)} of the model's tensors (first: {missing[0]}); "
            "attnscope does not run randomly initialized weights"
        )
    # tensors no module reads (rotary caches that older checkpoints store are recomputed, not weights)
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise LoadError(
            f"{path}: the weights hold {len(unexpected)} tensors the model its config describes does not have "
            f"(first: {unexpected[0]}): they would be ignored, so these are not that model's weights"
        )
    return model


# the sizes every causal LM's config has, checked before transformers builds anything from them
SIZE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
OPTIONAL_SIZE_KEYS = ("num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings")


def _validate_sizes(config, file: Path) -> None:
    """A `ConfigError` naming the key when a size is not a positive int."""
    from attnscope.model.config import MAX_LAYERS, show

    for key in SIZE_KEYS + OPTIONAL_SIZE_KEYS:
        value = getattr(config, key, None)
        if value is None and key in OPTIONAL_SIZE_KEYS:
            continue
        if not _is_positive_int(value):
            raise ConfigError(f"{file}: {key} must be a positive integer, got {show(value)}")
    if config.num_hidden_layers > MAX_LAYERS:
        raise ConfigError(f"{file}: num_hidden_layers {config.num_hidden_layers:,} is more than {MAX_LAYERS:,}")


def _parameter_count(transformers, config, path: Path) -> int:
    """The parameters of the model transformers would build from `config`, counted on the meta
    device (nothing is allocated); tied parameters once."""
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # a config transformers accepts but cannot build a model from
        raise LoadError(f"{path}: transformers cannot build the model its config describes: {_reason(exc)}") from None
    return sum(p.numel() for p in model.parameters())


# what transformers and torch advise that attnscope must not pass on: running a repository's code, unpickling
_ADVICE = re.compile(r"[^.]*(?:trust_remote_code|weights_only=False|inspect the repository content)[^.]*\.?\s*")


def _reason(exc: Exception) -> str:
    """transformers' error `exc` as one line, without advice attnscope refuses to follow; a model that
    needs its own code is said so."""
    text = " ".join(str(exc).split())
    if "custom code" in text or "trust_remote_code" in text:
        return "the model needs code of its own (auto_map), which attnscope never runs"
    return _ADVICE.sub("", text).strip() or type(exc).__name__


def _quiet(transformers) -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
