"""GGUF files (llama.cpp's format, as Ollama and LM Studio keep models) loaded into the native model.

The header is read here (`Header`), as llama.cpp's ``gguf_init_from_file`` reads it: every count and
length bounded by the file's size before anything is allocated, a value nobody reads stepped over, not
built (`Metadata` reads a string or an array when it is first asked for). The `gguf` package (the
``gguf`` extra: ``pip install "attnscope[gguf]"``) gives the tensor types, the name table and the
dequantization:

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
import mmap
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
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


# ---- the header --------------------------------------------------------------------------------------
# GGUF's value types (gguf.GGUFValueType): struct format of each fixed-size one, and the string / array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT


class Truncated(Exception):
    """The header claims more bytes than the file has (a count or a length that does not fit)."""


@dataclass(frozen=True)
class Value:
    """Where one metadata value lies in the file: its type (and element type and count for an array)
    and its bytes ``start:stop``; read only when asked for (`Metadata`)."""

    kind: int
    start: int
    stop: int
    item: int | None = None  # an array's element type
    count: int = 1  # an array's length


class Header:
    """A bounded walk through the bytes of a GGUF header, as llama.cpp's ``gguf_init_from_file`` does it:
    every count and length is checked against the bytes left before anything is read or allocated, and
    a value nobody asks for is stepped over (an array of strings by its lengths alone)."""

    def __init__(self, data: mmap.mmap | bytes, size: int):
        self.data, self.size, self.pos = data, size, 0

    def take(self, n: int) -> int:
        """The position of the next `n` bytes, which must be in the file."""
        if n < 0 or self.pos + n > self.size:
            raise Truncated
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt)))[0]

    def string_span(self) -> tuple[int, int]:
        n = self.scalar("<Q")
        start = self.take(n)
        return start, start + n

    def value(self, kind: int) -> Value:
        start = self.pos
        if kind in _SCALARS:
            self.take(struct.calcsize(_SCALARS[kind]))
            return Value(kind, start, self.pos)
        if kind == _STRING:
            self.string_span()
            return Value(kind, start, self.pos)
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in _SCALARS:
            self.take(count * struct.calcsize(_SCALARS[item]))  # checked against the bytes left
        elif item == _STRING:
            if count * 8 > self.size - self.pos:  # each string has at least its 8-byte length
                raise Truncated
            for _ in range(count):
                self.string_span()
        else:
            raise ValueError(f"arrays of value type {item} are not supported")
        return Value(kind, start, self.pos, item, count)


def _decode(data, value: Value) -> Any:
    """The Python value (a list for an array) of `value`, read from `data`."""
    if value.kind in _SCALARS:
        return struct.unpack_from(_SCALARS[value.kind], data, value.start)[0]
    if value.kind == _STRING:
        n = struct.unpack_from("<Q", data, value.start)[0]
        return bytes(data[value.start + 8 : value.start + 8 + n]).decode("utf-8")
    start = value.start + 12  # element type and count
    if value.item in _NUMPY:
        return np.frombuffer(data, _NUMPY[value.item], value.count, start).tolist()
    out, pos = [], start
    for _ in range(value.count):
        n = struct.unpack_from("<Q", data, pos)[0]
        out.append(bytes(data[pos + 8 : pos + 8 + n]).decode("utf-8"))
        pos += 8 + n
    return out


class Metadata(Mapping):
    """The metadata of a GGUF file by key: numbers and flags read with the header, strings and arrays
    read from the file when first asked for (most files carry megabytes nobody here reads: chat
    templates, and the vocabulary of a file that is refused anyway)."""

    def __init__(self, path: Path, values: dict[str, Value]):
        self.path, self.spans = path, values
        self._read: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._read:
            value = self.spans[key]
            with self.path.open("rb") as f:
                f.seek(value.start)
                data = f.read(value.stop - value.start)
            if len(data) != value.stop - value.start:
                raise LoadError(f"{self.path}: truncated (the file changed while it was read)")
            try:
                self._read[key] = _decode(data, Value(value.kind, 0, len(data), value.item, value.count))
            except UnicodeDecodeError:
                raise LoadError(f"{self.path}: metadata {key} is not UTF-8 text") from None
        return self._read[key]

    def __iter__(self):
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def count(self, key: str) -> int | None:
        """The length of array `key` without reading it (None when `key` is no array)."""
        value = self.spans.get(key)
        return value.count if value is not None and value.kind == _ARRAY else None


def require_regular_file(path: Path) -> int:
    """The size of `path`, which must be a regular file: a FIFO, a device or a socket is refused from
    its stat, before anything opens it (opening a FIFO waits for a writer)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise LoadError(
            f"{path}: not a regular file ({_node_kind(info.st_mode)}); give a model directory or a GGUF file"
        )
    return info.st_size


def _node_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    kinds.append((stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a directory" if stat.S_ISDIR(mode) else "no file")


class GGUFFile:
    """The metadata and the tensor table of a GGUF file, read by `Header` (every size bounded by the
    file's, no tensor data read); `read_rows` reads one band of a tensor's rows from the file."""

    def __init__(self, path: Path):
        gguf = _gguf()
        self.path = path
        size = require_regular_file(path)
        try:
            with path.open("rb") as f:
                magic = f.read(4)
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size >= 4 else b""
        except OSError as exc:
            raise LoadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if magic != b"GGUF":
            raise LoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        header = Header(data, min(size, len(data)))
        try:
            self.metadata, self.tensors = self._read_header(header, gguf)
        except Truncated:
            where = "tensor data" if header.pos >= size else "header"
            raise LoadError(f"{path}: truncated (its {size:,} bytes end inside the {where})") from None
        except ValueError as exc:
            raise LoadError(f"{path}: not a valid GGUF file ({exc})") from None
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
        self.architecture = self.get("general.architecture")

    def _read_header(self, header: Header, gguf) -> tuple[Metadata, dict[str, tuple[Any, tuple[int, ...], int]]]:
        header.take(4)  # the magic
        version = header.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}: attnscope reads versions 2 and 3, little-endian")
        n_tensors, n_values = header.scalar("<Q"), header.scalar("<Q")
        if n_values * 13 + n_tensors * 24 > header.size - header.pos:  # the smallest entries of each
            raise Truncated
        values: dict[str, Value] = {}
        for _ in range(n_values):
            key = self._text(header, "a metadata key")
            kind = header.scalar("<I")
            if key in values:
                raise ValueError(f"metadata {key} appears twice")
            values[key] = header.value(kind)
        metadata = Metadata(self.path, values)
        for key, value in values.items():  # numbers and flags now: they are small and the mmap is open
            if value.kind in _SCALARS:
                metadata._read[key] = _decode(header.data, value)
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {show(alignment)} is not a power of two")
        infos = []
        for _ in range(n_tensors):
            name = self._text(header, "a tensor name")
            n_dims = header.scalar("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
            dims = [header.scalar("<Q") for _ in range(n_dims)]
            raw_kind, offset = header.scalar("<I"), header.scalar("<Q")
            try:
                kind = gguf.GGMLQuantizationType(raw_kind)
            except ValueError:
                raise ValueError(f"tensor {name!r} has an unknown type {raw_kind}") from None
            infos.append((name, kind, dims, offset))
        start = -(-header.pos // alignment) * alignment  # the tensor data, aligned
        tensors = {}
        for name, kind, dims, offset in infos:
            if name in tensors:
                raise ValueError(f"tensor {name!r} appears twice")
            block, type_size = gguf.GGML_QUANT_SIZES.get(kind, (1, 0))
            nbytes = -(-math.prod(dims) // block) * type_size
            if start + offset + nbytes > header.size:
                header.pos = header.size  # the header was whole: the error says the tensor data
                raise Truncated
            tensors[name] = (kind, tuple(reversed(dims)), start + offset)  # name -> (type, torch shape, offset)
        return metadata, tensors

    @staticmethod
    def _text(header: Header, what: str) -> str:
        start, stop = header.string_span()
        try:
            return bytes(header.data[start:stop]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8 text") from None

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
    vocab = file.get(meta["vocab_size"])
    if vocab is None:
        vocab = file.metadata.count("tokenizer.ggml.tokens")  # the array's length: no token is read
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
    require_model_fits(config, dtype, device, source=f"{path}: the metadata")  # before anything is allocated
    n_tokens = file.metadata.count("tokenizer.ggml.tokens")  # checked before the vocabulary is read
    if n_tokens is not None and n_tokens > config.vocab_size:
        raise ConfigError(
            f"{path}: tokenizer.ggml.tokens holds {n_tokens:,} tokens but the model's vocab_size is "
            f"{config.vocab_size:,}"
        )
    tokenizer = read_tokenizer(path, file.metadata)
    with torch.device("meta"):
        net = Transformer(config).to(dtype)
    tensors = GGUFTensors(file, config, list(net.state_dict()))
    load_state_dict(net, [path], progress, open_file=lambda _: tensors)
    factors = tensors.rope_factors()
    if factors is not None:
        net.rotary_emb.inv_freq = net.rotary_emb.inv_freq / factors
    net = net.to(device).eval()
    return LoadedModel(net, tokenizer, path.name.removesuffix(".gguf"), path)
