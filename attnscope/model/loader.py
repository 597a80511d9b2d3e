"""Loading models: Hugging Face model directories and the bundled sample models.

A directory in the layout written by ``save_pretrained``: ``config.json``, weights in
``model.safetensors`` or shards listed by ``model.safetensors.index.json``, and ``tokenizer.json``
(optional; without it prompts must be token ids). Pickled checkpoints (``pytorch_model.bin``) can run
code when unpickled, so they are refused unless the caller opts in with ``allow_pickle=True``, and
are then read with ``torch.load(weights_only=True)``.

Every problem a user can cause is a `LoadError` / `ConfigError` with one clear sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from attnscope.backends import AttendFn
from attnscope.engine import Engine, Layout
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.masks import MaskSpec
from attnscope.model.config import SUPPORTED_MODEL_TYPES, ModelConfig, read_json, show
from attnscope.model.llama import KVCache, Transformer
from attnscope.model.memory import check_float32_copy_fits, check_kv_cache_fits, check_model_fits
from attnscope.model.tokenizer import Tokenizer
from attnscope.samples import DEFAULT_MODEL, sample_models

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# progress(done, total, description) is called while weights load
Progress = Callable[[int, int, str], None]


def gguf_files(path: Path) -> list[Path]:
    """The ``*.gguf`` files of directory `path` (none when it is not a directory)."""
    return sorted(p for p in path.glob("*.gguf") if p.is_file()) if path.is_dir() else []


def is_gguf(path: Path) -> bool:
    """Whether file `path` is meant as GGUF: its name ends in ``.gguf``, or it starts with GGUF's magic
    bytes (Ollama keeps its models as blobs with no extension)."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UserError(f"unsupported dtype {dtype} (choose from: float32, float16, bfloat16)")
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (choose from: float32, float16, bfloat16)")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r} (for example: cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} is not available: torch sees no CUDA GPU here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} is not available: {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r} (supported: cpu, cuda)")
    return dev


def resolve_model_path(name_or_path: str | Path) -> Path:
    """The model directory or GGUF file of a sample model name or a path; a clear error when it is
    neither. A directory with no config.json that holds one GGUF file stands for that file."""
    path = Path(name_or_path).expanduser()
    samples = sample_models()
    if not path.exists() and str(name_or_path) in samples:  # e.g. "tiny-code", "broken/nan-k-proj"
        path = samples[str(name_or_path)]
    elif not path.exists() and _looks_like_hub_id(str(name_or_path)):
        return _hub_snapshot(str(name_or_path))
    if not path.exists():
        raise LoadError(
            f"model {str(name_or_path)!r} not found: no such path and no sample model of that name "
            f"(sample models: {', '.join(samples) or 'none'})"
        )
    if not path.is_dir():
        if is_gguf(path):
            return path
        raise LoadError(f"{path} is not a directory or a GGUF file (expected a Hugging Face model directory "
                        "or a .gguf file)")
    if (path / "config.json").is_file():
        return path
    found = gguf_files(path)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(f.name for f in found[:3]) + (", ..." if len(found) > 3 else "")
        raise LoadError(f"{path} has no config.json and {len(found)} GGUF files: name one of them ({names})")
    raise LoadError(f"{path} has no config.json (expected a Hugging Face model directory)")


def _looks_like_hub_id(name: str) -> bool:
    """``org/name``: two non-empty parts of letters, digits and ``-_.``, not a relative path."""
    parts = name.split("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return (len(parts) == 2 and all(parts) and all(set(p) <= allowed for p in parts)
            and not any(p in (".", "..") for p in parts))


def _hub_snapshot(repo_id: str) -> Path:
    """The directory of `repo_id`'s snapshot in the local Hugging Face cache; nothing is downloaded."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise LoadError(f"model {repo_id!r} not found: no such path, and reading the Hugging Face cache "
                        'needs huggingface_hub (pip install "attnscope[hf]")') from None
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise LoadError(f"model {repo_id!r} is not in the local Hugging Face cache: download it first with "
                        f"`hf download {repo_id}` (attnscope never downloads)") from None
    if not (path / "config.json").is_file():
        raise LoadError(f"{path} (the cached snapshot of {repo_id}) has no config.json")
    return path


def read_config(path: Path) -> ModelConfig:
    """The checked config of model directory `path`; errors name ``config.json`` and the key."""
    file = path / "config.json"
    raw = read_config_json(path)
    try:
        return ModelConfig.from_hf(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# dtypes a checkpoint may hold, as safetensors names them; weights are cast to the model's dtype
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _pickle_refused(path: Path, file: str) -> LoadError:
    return LoadError(
        f"{path} has pickled weights ({file}); unpickling can run arbitrary code, so attnscope loads "
        "safetensors only. Convert the checkpoint, or pass --allow-pickle to load it with "
        "torch.load(weights_only=True)"
    )


def _shards(path: Path, index: Path, allow_pickle: bool) -> list[Path]:
    """The files named by a sharded checkpoint's index, each checked to lie inside `path`."""
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise LoadError(f"{index}: malformed index (expected a JSON object whose weight_map maps tensor "
                        "names to file names)")
    if not weight_map:
        raise LoadError(f"{index}: the weight_map names no tensors")
    roots = [path.resolve()]
    if path.absolute().parent.name == "snapshots":  # a Hugging Face hub cache links files to its blobs/
        roots.append((path.absolute().parent.parent / "blobs").resolve())
    files = []
    for name in dict.fromkeys(weight_map.values()):
        shard = Path(name)
        if shard.is_absolute() or ".." in shard.parts or not name:
            raise LoadError(f"{index} names shard {name!r}, which is not a file name inside {path}")
        file = path / shard
        try:
            target = file.resolve()
        except (OSError, RuntimeError):  # a loop of links
            raise LoadError(f"{index} names shard {name!r}, a link that cannot be resolved") from None
        if not any(target.is_relative_to(root) for root in roots):
            raise LoadError(f"{index} names shard {name!r}, a link that leads outside {path}")
        if not file.is_file():
            raise LoadError(f"{index} lists shard {name}, which is missing")
        if file.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise _pickle_refused(path, name)
        files.append(file)
    return files


def weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _shards(path, index, allow_pickle)
    pickle_index = path / "pytorch_model.bin.index.json"
    pickled = sorted(path.glob("pytorch_model*.bin"))
    if (pickled or pickle_index.is_file()) and not allow_pickle:
        raise _pickle_refused(path, pickled[0].name if pickled else pickle_index.name)
    if pickle_index.is_file():
        return _shards(path, pickle_index, allow_pickle)
    if pickled:
        return pickled
    raise LoadError(f"{path} has no weights (expected model.safetensors or model.safetensors.index.json)")


def _torch_load_message(exc: Exception) -> str:
    """The part of a torch.load error that says what is wrong with the file, without torch's advice
    about weights_only (which a user of --allow-pickle must not follow)."""
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    paragraphs = [" ".join(p.split()) for p in str(exc).split("\n\n") if p.strip()]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    core = [p for p in paragraphs if not p.startswith(advice)]
    return "; ".join(core) or (paragraphs[0] if paragraphs else type(exc).__name__)


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says what matters
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoadError(f"{file}: refused by torch.load(weights_only=True): {_torch_load_message(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise LoadError(f"{file}: expected a dict of tensors by name, got a {type(state).__name__}")
    return state


class TensorSource(Protocol):
    """The tensors of one weight file, as `load_state_dict` reads them: names, shapes and dtypes first
    (before any data is read), then each tensor on demand. Messages name tensors as the file does."""

    file: Path

    def keys(self) -> list[str]:
        """The tensors' names, as the file spells them."""

    def key(self, name: str) -> str | None:
        """The model's parameter name of tensor `name`; None for a tensor that is not a parameter
        (skipped); a `LoadError` for one this kind of file must not have."""

    def name(self, key: str) -> str:
        """The inverse of `key`: the name parameter `key` has in such a file."""

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name`; a `LoadError` when its dtype cannot be loaded."""

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Tensor `name` read from the file, in `dtype`."""


class _Tensors:
    """The tensors of one safetensors (or, opted in, pickled) weight file: a `TensorSource` whose
    names, shapes and dtypes come from the safetensors header."""

    def __init__(self, file: Path):
        self.file = file
        if file.suffix in PICKLE_SUFFIXES:
            self._state = _torch_load(file)
            self._open = None
            return
        from safetensors import SafetensorError, safe_open

        try:
            self._open = safe_open(str(file), framework="pt")
        except (SafetensorError, OSError, ValueError) as exc:
            raise LoadError(f"{file}: not a valid safetensors file ({exc})") from None
        self._state = None

    def keys(self) -> list[str]:
        return list(self._state if self._state is not None else self._open.keys())

    def key(self, name: str) -> str | None:
        key = checkpoint_key(name)
        return None if key.endswith("rotary_emb.inv_freq") else key  # older checkpoints store it; recomputed

    def name(self, key: str) -> str:
        return hf_name(key)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._state is not None:
            value = self._state[name]
            if not isinstance(value, torch.Tensor):
                raise LoadError(f"{self.file.name}: entry {name!r} is not a tensor but {show(value)}")
            names = {v: k for k, v in FLOAT_DTYPES.items()}
            shape, kind = tuple(value.shape), names.get(value.dtype, str(value.dtype).removeprefix("torch."))
        else:
            info = self._open.get_slice(name)
            shape, kind = tuple(info.get_shape()), info.get_dtype()  # the dtype as safetensors names it
        if kind not in FLOAT_DTYPES:
            raise LoadError(
                f"{self.file.name}: tensor {name!r} has dtype {kind}; attnscope loads floating-point "
                "weights only (F32, F16, BF16, F64), not quantized or integer ones"
            )
        return shape

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if self._state is not None:
            return self._state.pop(name).to(dtype)
        from safetensors import SafetensorError

        try:
            return self._open.get_tensor(name).to(dtype)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{self.file}: tensor {name!r} cannot be read ({exc})") from None


def weights_summary(files: list[Path]) -> tuple[int, int | None]:
    """(number of elements, number of decoder layers) of the weights in `files`, from the safetensors
    headers (no tensor is read); pickled files count their size in float32 elements. The layers are
    counted from names like ``model.layers.11.…`` (None when the names have no such index)."""
    import re

    numel, top = 0, -1
    for file in files:
        if file.suffix in PICKLE_SUFFIXES:
            numel += file.stat().st_size // 4
            continue
        header = _Tensors(file)._open  # a valid safetensors file, or a LoadError
        for key in header.keys():
            shape = header.get_slice(key).get_shape()
            count = 1
            for n in shape:
                count *= n
            numel += count
            found = re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.", key)
            if found:
                top = max(top, int(found.group(1)))
    return numel, (top + 1 if top >= 0 else None)


def checkpoint_key(hf_key: str) -> str:
    """The one place where HF parameter names become attnscope's: drop the ``model.`` prefix."""
    return hf_key.removeprefix("model.")


def hf_name(key: str) -> str:
    """The inverse of `checkpoint_key`: the name a tensor has in a HF checkpoint."""
    return key if key.startswith("lm_head.") else f"model.{key}"


def load_state_dict(model: Transformer, files: list[Path], progress: Progress | None = None,
                    open_file: Callable[[Path], TensorSource] = _Tensors) -> None:
    """Load weights into `model` (on the meta device), checking names, shapes and dtypes of every
    tensor of a file before reading its data; each tensor is cast to the model's dtype as it is read.
    `open_file` opens a weight file as a `TensorSource` (default: safetensors)."""
    expected = {name: p for name, p in model.state_dict(keep_vars=True).items()}
    dtype = model.embed_tokens.weight.dtype
    state: dict[str, torch.Tensor] = {}
    tensors = None
    for i, file in enumerate(files):
        if progress:
            progress(i, len(files), f"reading {file.name}")
        tensors = open_file(file)
        wanted = []
        for name in tensors.keys():
            key = tensors.key(name)
            if key is None:
                continue
            if key not in expected:
                raise LoadError(f"{file.name}: unexpected tensor {name!r} for this config")
            shape = tensors.shape(name)
            if shape != tuple(expected[key].shape):
                raise LoadError(
                    f"{file.name}: tensor {name!r} has shape {shape}, the config needs {tuple(expected[key].shape)}"
                )
            wanted.append((name, key))
        for name, key in wanted:
            state[key] = tensors.get(name, dtype)
    if model.config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
        state.setdefault("embed_tokens.weight", state.get("lm_head.weight"))
    missing = [k for k in expected if state.get(k) is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        named = tensors.name(missing[0]) if tensors is not None else hf_name(missing[0])
        where = f"{files[0].name}: " if len(files) == 1 else ""
        raise LoadError(f"{where}the weights lack tensor {named!r}{more}")
    model.load_state_dict(state, assign=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    if progress:
        progress(len(files), len(files), "done")


def config_layout(c: ModelConfig) -> Layout:
    """The `Layout` of a native model's config."""
    eos = c.eos_token_id if isinstance(c.eos_token_id, list) else [] if c.eos_token_id is None else [c.eos_token_id]
    return Layout(model_type=c.model_type, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                  n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, vocab_size=c.vocab_size,
                  max_positions=c.max_position_embeddings,
                  bos_token_id=c.bos_token_id if isinstance(c.bos_token_id, int) else None,
                  eos_token_ids=tuple(eos))


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
        check_kv_cache_fits(self.layout, batch, max_len, self.dtype, self.device)  # before allocating it
        return self.net.new_cache(batch, max_len)

    def forward(self, ids: torch.Tensor, attend: AttendFn, *, cache: KVCache | None = None, recorder=None,
                mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(ids, cache, recorder=recorder, attend=attend, mask=mask, positions=positions)

    def forward_token_by_token(self, ids: torch.Tensor, attend: AttendFn, *, cache: KVCache, recorder=None,
                               mask: MaskSpec | None = None, positions: torch.Tensor | None = None,
                               step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """`attnscope.engine.token_by_token`, a layer at a time (`Transformer.forward_token_by_token`)."""
        return self.net.forward_token_by_token(ids, cache, recorder=recorder, attend=attend, mask=mask,
                                               positions=positions, step=step)

    def forward_isolated(self, ids: torch.Tensor, attend: AttendFn, *, cache: KVCache, parallel, incremental,
                         reference=None, mask: MaskSpec | None = None, positions: torch.Tensor | None = None,
                         step: Callable[[int, int], None] | None = None) -> None:
        """Every layer's attention on the parallel forward's own input to it, in parallel, a token at a
        time through `cache` and in float32 (`Transformer.forward_isolated`)."""
        self.net.forward_isolated(ids, cache, parallel=parallel, incremental=incremental, reference=reference,
                                  attend=attend, mask=mask, positions=positions, step=step)

    def forward_float32(self, ids: torch.Tensor, *, recorder=None, mask: MaskSpec | None = None,
                        positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of `forward` computed in float32 with the eager attention (`Transformer.forward_float32`);
        a `MemoryError` when a float32 copy of the weights cannot fit beside the model."""
        check_float32_copy_fits(self.net, self.device)
        return self.net.forward_float32(ids, recorder=recorder, mask=mask, positions=positions)

    def decode(self, logits: torch.Tensor, cache: KVCache, attend: AttendFn, max_new_tokens: int, *,
               mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.decode(logits, cache, max_new_tokens, list(self.layout.eos_token_ids) or None,
                               attend=attend, mask=mask, positions=positions)

    def __repr__(self) -> str:
        c = self.config
        return (f"LoadedModel({self.name!r}, {c.model_type}, layers={c.num_hidden_layers}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}, dtype={self.dtype}, "
                f"device={self.device})")


ENGINES = ("auto", "native", "hf")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r} (choose from: {', '.join(ENGINES)})")


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    engine: str = "auto",
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> Engine:
    """Load a sample model by name, a Hugging Face model directory, a GGUF file, or a Hub id from the
    local cache.

    Args:
        name_or_path: a bundled sample model (``attnscope models``), a directory, a ``.gguf`` file
            (read with the ``gguf`` package: ``pip install "attnscope[gguf]"``; native engine), or
            ``org/name`` of a snapshot in the Hugging Face cache (never downloaded here).
        dtype: torch dtype or its name: float32, float16, bfloat16.
        device: cpu, cuda, cuda:N.
        engine: ``native`` (attnscope's own Llama-family model: llama, mistral, qwen2, qwen3), ``hf``
            (transformers' model, watched through its AttentionInterface; any causal LM), or ``auto``:
            native for the native model types, else hf.
        allow_pickle: accept ``pytorch_model.bin`` checkpoints (read with weights_only=True).
        progress: called as progress(done, total, description) while weights load (native engine).

    Returns:
        An engine: a `LoadedModel` (native; ``.net`` is the `Transformer`) or an
        `attnscope.hf.HFEngine` (``.model`` is the transformers model); both have ``.tokenizer``.
    """
    check_engine(engine)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = resolve_model_path(name_or_path)
    if path.is_file():
        if engine == "hf":
            raise UserError(f"{path}: GGUF files run on the native engine (--engine native or auto)")
        from attnscope.model.gguf import load_gguf

        return load_gguf(path, torch_dtype, dev, progress)
    if engine == "auto":
        model_type = read_config_json(path).get("model_type")
        # a model_type that is not a string is a broken config: the native loader's error says so
        engine = "hf" if isinstance(model_type, str) and model_type not in SUPPORTED_MODEL_TYPES else "native"
    if engine == "hf":
        from attnscope import hf

        return hf.load(path, torch_dtype, dev, allow_pickle=allow_pickle)
    config = read_config(path)
    check_model_fits(config, torch_dtype, dev)  # from the config alone, before anything is allocated
    tokenizer = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    files = weight_files(path, allow_pickle)
    with torch.device("meta"), _SkipInit():  # shapes only: every parameter is about to be loaded
        net = Transformer(config).to(torch_dtype)
    load_state_dict(net, files, progress)
    net = net.to(dev).eval()
    return LoadedModel(net, tokenizer, path.name, path)


def read_config_json(path: Path) -> dict:
    """config.json of model directory `path` as a dict (a `LoadError` when it is not a JSON object)."""
    file = path / "config.json"
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise LoadError(f"{file}: expected a JSON object, got a {type(raw).__name__}")
    return raw
