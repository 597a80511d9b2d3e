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

import torch

from attnscope.backends import AttendFn
from attnscope.engine import Layout
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.masks import MaskSpec
from attnscope.model.config import ModelConfig, read_json, show
from attnscope.model.llama import KVCache, Transformer
from attnscope.model.memory import check_kv_cache_fits, check_model_fits
from attnscope.model.tokenizer import Tokenizer

DEFAULT_MODEL = "tiny-code"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# progress(done, total, description) is called while weights load
Progress = Callable[[int, int, str], None]


def sample_models_dir() -> Path:
    import attnscope.sample_models

    return Path(attnscope.sample_models.__file__).parent


def sample_models() -> dict[str, Path]:
    """Bundled sample models by name."""
    root = sample_models_dir()
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}


def model_card_summary(path: Path) -> str:
    """The first line after the title of a model's card (its README.md), or ""."""
    card = path / "README.md"
    if not card.is_file():
        return ""
    lines = [ln.strip() for ln in card.read_text().splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("#") and ln != "---"]
    return body[0] if body else ""


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


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """The directory of a sample model name or a path; a clear error when it is neither."""
    path = Path(name_or_path).expanduser()
    samples = sample_models()
    if not path.exists() and str(name_or_path) in samples:
        return samples[str(name_or_path)]
    bundled = sample_models_dir() / str(name_or_path)  # e.g. "broken/nan-k-proj"
    if not path.exists() and (bundled / "config.json").is_file():
        return bundled
    if not path.exists():
        raise LoadError(
            f"model {str(name_or_path)!r} not found: no such path and no sample model of that name "
            f"(sample models: {', '.join(samples) or 'none'})"
        )
    if not path.is_dir():
        raise LoadError(f"{path} is not a directory (expected a Hugging Face model directory)")
    if not (path / "config.json").is_file():
        raise LoadError(f"{path} has no config.json (expected a Hugging Face model directory)")
    return path


def read_config(path: Path) -> ModelConfig:
    """The checked config of model directory `path`; errors name ``config.json`` and the key."""
    file = path / "config.json"
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise LoadError(f"{file}: expected a JSON object, got a {type(raw).__name__}")
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


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
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


class _Tensors:
    """The tensors of one weight file: names, shapes and dtypes first (from the safetensors header,
    before any data is read), then each tensor on demand."""

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

    def describe(self, key: str) -> tuple[tuple[int, ...], str]:
        """(shape, dtype name) of tensor `key`; the dtype as safetensors names it (F32, I64, ...)."""
        if self._state is not None:
            value = self._state[key]
            if not isinstance(value, torch.Tensor):
                raise LoadError(f"{self.file.name}: entry {key!r} is not a tensor but {show(value)}")
            names = {v: k for k, v in FLOAT_DTYPES.items()}
            return tuple(value.shape), names.get(value.dtype, str(value.dtype).removeprefix("torch."))
        info = self._open.get_slice(key)
        return tuple(info.get_shape()), info.get_dtype()

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return self._state.pop(key)
        from safetensors import SafetensorError

        try:
            return self._open.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{self.file}: tensor {key!r} cannot be read ({exc})") from None


def checkpoint_key(hf_key: str) -> str:
    """The one place where HF parameter names become attnscope's: drop the ``model.`` prefix."""
    return hf_key.removeprefix("model.")


def hf_name(key: str) -> str:
    """The inverse of `checkpoint_key`: the name a tensor has in a HF checkpoint."""
    return key if key.startswith("lm_head.") else f"model.{key}"


def load_state_dict(model: Transformer, files: list[Path], progress: Progress | None = None) -> None:
    """Load weights into `model` (on the meta device), checking names, shapes and dtypes of every
    tensor of a file before reading its data; each tensor is cast to the model's dtype as it is read."""
    expected = {name: p for name, p in model.state_dict(keep_vars=True).items()}
    dtype = model.embed_tokens.weight.dtype
    state: dict[str, torch.Tensor] = {}
    for i, file in enumerate(files):
        if progress:
            progress(i, len(files), f"reading {file.name}")
        tensors = _Tensors(file)
        wanted = []
        for hf_key in tensors.keys():
            key = checkpoint_key(hf_key)
            if key.endswith("rotary_emb.inv_freq"):
                continue  # older checkpoints store it; it is recomputed from the config
            if key not in expected:
                raise LoadError(f"{file.name}: unexpected tensor {hf_key!r} for this config")
            shape, kind = tensors.describe(hf_key)
            if kind not in FLOAT_DTYPES:
                raise LoadError(
                    f"{file.name}: tensor {hf_key!r} has dtype {kind}; attnscope loads floating-point "
                    "weights only (F32, F16, BF16, F64), not quantized or integer ones"
                )
            if shape != tuple(expected[key].shape):
                raise LoadError(
                    f"{file.name}: tensor {hf_key!r} has shape {shape}, the config needs {tuple(expected[key].shape)}"
                )
            wanted.append((hf_key, key))
        for hf_key, key in wanted:
            state[key] = tensors.get(hf_key).to(dtype)
    if model.config.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("embed_tokens.weight"))
        state.setdefault("embed_tokens.weight", state.get("lm_head.weight"))
    missing = [k for k in expected if state.get(k) is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise LoadError(f"the weights lack tensor {hf_name(missing[0])!r}{more}")
    model.load_state_dict(state, assign=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    if progress:
        progress(len(files), len(files), "done")


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
        c = self.config
        eos = c.eos_token_id if isinstance(c.eos_token_id, list) else [] if c.eos_token_id is None else [c.eos_token_id]
        return Layout(model_type=c.model_type, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                      n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, vocab_size=c.vocab_size,
                      max_positions=c.max_position_embeddings,
                      bos_token_id=c.bos_token_id if isinstance(c.bos_token_id, int) else None,
                      eos_token_ids=tuple(eos))

    def layer_masks(self) -> list[MaskSpec]:
        return self.net.masks

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        check_kv_cache_fits(self.config, batch, max_len, self.dtype, self.device)  # before allocating it
        return self.net.new_cache(batch, max_len)

    def forward(self, ids: torch.Tensor, attend: AttendFn, *, cache: KVCache | None = None, recorder=None,
                mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(ids, cache, recorder=recorder, attend=attend, mask=mask, positions=positions)

    def decode(self, logits: torch.Tensor, cache: KVCache, attend: AttendFn, max_new_tokens: int, *,
               mask: MaskSpec | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.decode(logits, cache, max_new_tokens, list(self.layout.eos_token_ids) or None,
                               attend=attend, mask=mask, positions=positions)

    def __repr__(self) -> str:
        c = self.config
        return (f"LoadedModel({self.name!r}, {c.model_type}, layers={c.num_hidden_layers}, "
                f"heads={c.num_attention_heads}/{c.num_key_value_heads}, dtype={self.dtype}, "
                f"device={self.device})")


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    *,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a sample model by name or a Hugging Face model directory.

    Args:
        name_or_path: a bundled sample model (``attnscope models``) or a directory.
        dtype: torch dtype or its name: float32, float16, bfloat16.
        device: cpu, cuda, cuda:N.
        allow_pickle: accept ``pytorch_model.bin`` checkpoints (read with weights_only=True).
        progress: called as progress(done, total, description) while weights load.

    Returns:
        A `LoadedModel` with ``.net`` (the `Transformer`), ``.tokenizer`` and ``.config``.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = resolve_model_dir(name_or_path)
    config = read_config(path)
    check_model_fits(config, torch_dtype, dev)  # from the config alone, before anything is allocated
    tokenizer = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
        )
    files = _weight_files(path, allow_pickle)
    with torch.device("meta"), _SkipInit():  # shapes only: every parameter is about to be loaded
        net = Transformer(config).to(torch_dtype)
    load_state_dict(net, files, progress)
    net = net.to(dev).eval()
    return LoadedModel(net, tokenizer, path.name, path)
