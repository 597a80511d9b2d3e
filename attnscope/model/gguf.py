"""GGUF files (llama.cpp's format, as Ollama and LM Studio keep models) loaded into the native model.

The file is read with the `gguf` package's `GGUFReader`, the reader llama.cpp maintains (the
``gguf`` extra: ``pip install "attnscope[gguf]"``):

- architectures ``llama`` (Mistral-family files too, which llama.cpp writes as llama), ``qwen2`` and
  ``qwen3``. The metadata (``{arch}.block_count``, ``.attention.head_count``, ``.rope.freq_base``, ...)
  is turned into the dict of a Hugging Face ``config.json`` and built by `ModelConfig.from_hf`, so it
  is checked exactly as a config.json is; its messages name the GGUF keys.
- tensors by llama.cpp's names (``blk.N.attn_q.weight``, ...), mapped by the `gguf` package's own
  table (``gguf.get_tensor_name_map``); for the llama architecture the rows of q and k are put back
  in Hugging Face's order: llama.cpp's ``convert_hf_to_gguf.py`` permutes them (``LlamaModel.permute``)
  because its llama kernels rotate interleaved pairs. llama3 rope scaling is the ``rope_freqs``
  tensor, which divides the rotary frequencies.
- tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, dequantized by
  ``gguf.quants.dequantize`` a band of rows at a time straight into the model's parameters, so that
  loading never holds a second copy of the weights (the peak is the model plus one band).
- the tokenizer from ``tokenizer.ggml.*``, as llama.cpp tokenizes with it (`attnscope.model.gguf_tokenizer`):
  checked from the metadata before any tensor is read.

Everything a user can get wrong is one `LoadError` / `ConfigError` line naming the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnscope.errors import ConfigError, LoadError
from attnscope.model.config import ModelConfig, show
from attnscope.model.gguf_tokenizer import read_tokenizer, require_supported

ARCHITECTURES = ("llama", "qwen2", "qwen3")
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
EXTRA = 'reading GGUF files needs the gguf package: pip install "attnscope[gguf]"'
CHUNK_ELEMENTS = 1 << 20  # values dequantized at once (4 MiB of float32 and its temporaries)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise LoadError(EXTRA) from None
    return gguf


class GGUFFile:
    """The metadata and the tensor table of a GGUF file (read by `gguf.GGUFReader`, which maps the
    file and reads no tensor data); `read_rows` reads one band of a tensor's rows from the file."""

    def __init__(self, path: Path):
        gguf = _gguf()
        self.path = path
        try:
            with path.open("rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if magic != b"GGUF":
            raise LoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        try:
            reader = gguf.GGUFReader(path)
        except (IndexError, ValueError, KeyError, OverflowError, TypeError, OSError) as exc:
            size = path.stat().st_size
            if isinstance(exc, IndexError) or "cannot reshape" in str(exc):
                raise LoadError(
                    f"{path}: truncated (its {size:,} bytes end inside the "
                    f"{'tensor data' if 'reshape' in str(exc) else 'header'})"
                ) from None
            raise LoadError(f"{path}: not a valid GGUF file ({exc})") from None
        # the values as Python objects; the reader (a numpy view per string of the vocabulary) is let go
        self.metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except UnicodeDecodeError:
                raise LoadError(f"{path}: metadata {key} is not UTF-8 text") from None
        self.tensors = {
            t.name: (t.tensor_type, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.data_offset))
            for t in reader.tensors
        }  # name -> (ggml type, shape in torch order, offset)
        self.architecture = self.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        """The value of metadata `key` (a list for arrays), or `default`."""
        return self.metadata.get(key, default)

    def type_name(self, name: str) -> str:
        return self.tensors[name][0].name

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor `name` (viewed as ``[rows, columns]``) as a float tensor: F32,
        F16 and BF16 as stored, the quantized types dequantized to float32."""
        gguf = _gguf()
        kind, shape, offset = self.tensors[name]
        cols = shape[-1]
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        row_bytes = cols // block * type_size
        buf = bytearray((stop - start) * row_bytes)
        with self.path.open("rb") as f:
            f.seek(offset + start * row_bytes)
            got = f.readinto(buf)
        if got != len(buf):
            raise LoadError(f"{self.path}: truncated (tensor {name!r} ends after the file)")
        raw = np.frombuffer(buf, dtype=np.uint8).reshape(stop - start, row_bytes)
        if kind.name == "F32":
            return torch.from_numpy(raw.view(np.float32))
        if kind.name == "F16":
            return torch.from_numpy(raw.view(np.float16))
        if kind.name == "BF16":
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(gguf.quants.dequantize(raw, kind))


# ---- config --------------------------------------------------------------------------------------

# config.json keys and the GGUF metadata they come from ({} is the architecture)
_KEYS = {
    "vocab_size": "{}.vocab_size",
    "hidden_size": "{}.embedding_length",
    "intermediate_size": "{}.feed_forward_length",
    "num_hidden_layers": "{}.block_count",
    "num_attention_heads": "{}.attention.head_count",
    "num_key_value_heads": "{}.attention.head_count_kv",
    "head_dim": "{}.attention.key_length",
    "max_position_embeddings": "{}.context_length",
    "rms_norm_eps": "{}.attention.layer_norm_rms_epsilon",
    "rope_theta": "{}.rope.freq_base",
    "factor": "{}.rope.scaling.factor",
    "sliding_window": "{}.attention.sliding_window",
    "partial_rotary_factor": "{}.rope.dimension_count / head dim",
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
}
# metadata that would change the computation and that the native model does not implement
_REFUSED = ("expert_count", "attn_logit_softcapping", "final_logit_softcapping", "logit_scale", "attention.clamp_kqv")


def _per_layer(file: GGUFFile, key: str) -> Any:
    """A value that llama.cpp may write once or per layer: one value, or a ConfigError."""
    value = file.get(key)
    if isinstance(value, list):
        if len(set(value)) > 1:
            raise ConfigError(
                f"{file.path}: {key} differs between layers ({show(value, 40)}); attnscope "
                "runs models whose layers all have the same shape"
            )
        value = value[0] if value else None
    return value


def hf_config(file: GGUFFile) -> dict[str, Any]:
    """The ``config.json`` dict that the metadata of `file` describes."""
    arch = file.architecture
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ConfigError(
            f"{file.path}: unsupported GGUF architecture {show(arch)} (supported: {', '.join(ARCHITECTURES)})"
        )
    meta = {hf: key.format(arch) for hf, key in _KEYS.items()}
    for key in _REFUSED:
        if file.get(f"{arch}.{key}") not in (None, 0, 0.0):
            raise ConfigError(f"{file.path}: {arch}.{key} = {show(file.get(f'{arch}.{key}'))} is not supported")
    heads = _per_layer(file, meta["num_attention_heads"])
    kv_heads = _per_layer(file, meta["num_key_value_heads"])
    hidden = file.get(meta["hidden_size"])
    head_dim = file.get(meta["head_dim"])
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads
    value_dim = file.get(f"{arch}.attention.value_length", head_dim)
    if value_dim != head_dim:
        raise ConfigError(
            f"{file.path}: {arch}.attention.value_length ({show(value_dim)}) differs from the key "
            f"length ({show(head_dim)}); attnscope runs models whose values are as wide as keys"
        )
    rotary = file.get(f"{arch}.rope.dimension_count", head_dim)
    scaling_type = file.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ConfigError(
            f"{file.path}: unsupported {arch}.rope.scaling.type {show(scaling_type)} "
            "(supported: none, linear; llama3 scaling as the rope_freqs tensor)"
        )
    scaling = None
    if scaling_type == "linear":
        scaling = {"rope_type": "linear", "factor": file.get(meta["factor"])}
    sliding = file.get(meta["sliding_window"])
    name = file.get("general.name", "")
    model_type = arch
    if arch == "llama" and (sliding is not None or "mistral" in str(name).lower()):
        model_type = "mistral"  # llama.cpp writes Mistral models as llama; "mistral" reads a sliding window
    tokens = file.get("tokenizer.ggml.tokens")
    vocab = file.get(meta["vocab_size"])
    if vocab is None and isinstance(tokens, list):
        vocab = len(tokens)
    if vocab is None and "token_embd.weight" in file.tensors:
        vocab = file.tensors["token_embd.weight"][1][0]
    config = {
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _per_layer(file, meta["intermediate_size"]),
        "num_hidden_layers": file.get(meta["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": file.get(meta["max_position_embeddings"]),
        "rms_norm_eps": file.get(meta["rms_norm_eps"]),
        "rope_theta": file.get(meta["rope_theta"], 10000.0),
        "rope_scaling": scaling,
        "partial_rotary_factor": rotary / head_dim
        if isinstance(rotary, int) and isinstance(head_dim, int) and head_dim > 0
        else None,
        "attention_bias": "blk.0.attn_q.bias" in file.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in file.tensors,
        "tie_word_embeddings": "output.weight" not in file.tensors,  # llama.cpp writes only an untied output
        "sliding_window": sliding,
        "use_sliding_window": sliding is not None,
        "max_window_layers": 0,  # a window given in the metadata applies to every layer
        "bos_token_id": file.get(meta["bos_token_id"]),
        "eos_token_id": file.get(meta["eos_token_id"]),
    }
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
        if config[key] is None:
            raise ConfigError(f"{file.path}: the metadata has no {meta[key]}")
    return config


def read_config(file: GGUFFile) -> ModelConfig:
    """The checked `ModelConfig` of a GGUF file; errors name the GGUF metadata keys."""
    try:
        return ModelConfig.from_hf(hf_config(file))
    except ConfigError as exc:
        message = str(exc)
        if message.startswith(f"{file.path}:"):
            raise
        for hf, key in _KEYS.items():
            message = re.sub(
                rf"(?<![\w.])(rope_parameters\.|rope_scaling\.)?{hf}(?![\w])", key.format(file.architecture), message
            )
        raise ConfigError(f"{file.path}: {message.replace('config.json', 'the metadata')}") from None


# ---- tensors -------------------------------------------------------------------------------------


class GGUFTensors:
    """The tensors of a GGUF file as a `attnscope.model.loader.TensorSource`: llama.cpp's names, each
    tensor dequantized a band of rows at a time into a tensor of the model's dtype, q and k rows of
    the llama architecture put back in Hugging Face's order."""

    def __init__(self, file: GGUFFile, config: ModelConfig, keys: list[str]):
        from attnscope.model.checkpoint import hf_name

        gguf = _gguf()
        self.file = file.path
        self._file = file
        self._config = config
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[file.architecture.upper()], config.num_hidden_layers)
        self._keys: dict[str, str] = {}  # llama.cpp's name -> the model's parameter name
        for key in keys:
            base, _, suffix = hf_name(key).rpartition(".")
            mapped = names.get_name(base)
            if mapped is not None:
                self._keys[f"{mapped}.{suffix}"] = key
        self._names = {key: name for name, key in self._keys.items()}
        self.permuted = file.architecture == "llama"  # convert_hf_to_gguf permutes q/k rows for llama only

    def keys(self) -> list[str]:
        return [name for name in self._file.tensors if name != "rope_freqs.weight"]

    def key(self, name: str) -> str | None:
        if name not in self._keys:
            raise LoadError(f"{self.file.name}: unexpected tensor {name!r} for this config")
        return self._keys[name]

    def name(self, key: str) -> str:
        return self._names.get(key, key)

    def shape(self, name: str) -> tuple[int, ...]:
        kind = self._file.type_name(name)
        if kind not in TYPES:
            raise LoadError(
                f"{self.file.name}: tensor {name!r} has type {kind}, which attnscope cannot "
                f"dequantize (supported: {', '.join(TYPES)})"
            )
        shape = self._file.tensors[name][1]
        block = _gguf().GGML_QUANT_SIZES[self._file.tensors[name][0]][0]
        if shape[-1] % block:
            raise LoadError(
                f"{self.file.name}: tensor {name!r} has rows of {shape[-1]} values, not a "
                f"multiple of the {block} of a {kind} block"
            )
        return shape

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        shape = self._file.tensors[name][1]
        out = torch.empty(shape, dtype=dtype)
        head_dim = self._config.head_dim
        permute = self.permuted and (".attn_q." in name or ".attn_k." in name)
        if len(shape) == 1:  # a vector: read whole; a permuted bias is a column of rows
            values = self._file.read_rows(name, 0, 1).reshape(shape[0], 1)
            rows_out, step = out.view(shape[0], 1), shape[0]
            bands: list[tuple[int, int, torch.Tensor | None]] = [(0, shape[0], values)]
        else:
            rows, cols = shape[0], math.prod(shape[1:])
            rows_out = out.view(rows, cols)
            step = max(1, CHUNK_ELEMENTS // cols)
            if permute:  # bands of whole heads: the permutation stays inside a head
                step = max(head_dim, step // head_dim * head_dim)
            bands = [(s, min(s + step, rows), None) for s in range(0, rows, step)]  # read band by band
        for start, stop, given in bands:
            band = self._file.read_rows(name, start, stop) if given is None else given  # (rows, cols)
            target = rows_out[start:stop]
            if permute:
                # llama.cpp's rows of a head are interleaved pairs (i, i + D/2): undo LlamaModel.permute
                target = target.view(-1, 2, head_dim // 2, target.shape[-1])
                band = band.reshape(-1, head_dim // 2, 2, band.shape[-1]).transpose(1, 2)
            target.copy_(band)
        return out

    def rope_factors(self) -> torch.Tensor | None:
        """The ``rope_freqs`` tensor (llama3 rope scaling: each rotary frequency divided by its factor)."""
        if "rope_freqs.weight" not in self._file.tensors:
            return None
        shape = self.shape("rope_freqs.weight")
        if shape != (self._config.head_dim // 2,):
            raise LoadError(
                f"{self.file.name}: tensor 'rope_freqs.weight' has shape {shape}, the config needs "
                f"({self._config.head_dim // 2},)"
            )
        factors = self.get("rope_freqs.weight", torch.float32)
        if not bool((torch.isfinite(factors) & (factors > 0)).all()):
            raise LoadError(f"{self.file.name}: tensor 'rope_freqs.weight' holds factors that are not finite and > 0")
        return factors


def load_gguf(path: Path | GGUFFile, dtype: torch.dtype, device: torch.device, progress=None):
    """A `attnscope.model.native.LoadedModel` from GGUF file `path` (or its `GGUFFile`, already read;
    see the module docstring)."""
    from attnscope.model.llama import Transformer
    from attnscope.model.memory import require_model_fits
    from attnscope.model.native import LoadedModel, load_state_dict

    file = path if isinstance(path, GGUFFile) else GGUFFile(path)
    path = file.path
    require_supported(path, file.metadata)  # a refused tokenizer costs no tensor reading
    config = read_config(file)
    require_model_fits(config, dtype, device)  # from the config alone, before anything is allocated
    tokenizer = read_tokenizer(path, file.metadata)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    with torch.device("meta"):
        net = Transformer(config).to(dtype)
    tensors = GGUFTensors(file, config, list(net.state_dict()))
    load_state_dict(net, [path], progress, open_file=lambda _: tensors)
    factors = tensors.rope_factors()
    if factors is not None:
        net.rotary_emb.inv_freq = net.rotary_emb.inv_freq / factors
    net = net.to(device).eval()
    return LoadedModel(net, tokenizer, path.name.removesuffix(".gguf"), path)
