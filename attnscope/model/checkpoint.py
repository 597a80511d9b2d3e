"""Reading a checkpoint: a model directory's config.json and its weight files.

Weights come from ``model.safetensors`` or the shards listed by ``model.safetensors.index.json``.
Pickled checkpoints (``pytorch_model.bin``) can run code when unpickled, so they are refused unless
the caller opts in with ``allow_pickle=True``, and are then read with ``torch.load(weights_only=True)``.
`load_state_dict` checks the names, shapes and dtypes of every tensor of a file before reading its
data. Checkpoint key renaming (HF's ``model.`` prefix) happens in one place: `checkpoint_key` /
`hf_name`. Every problem a user can cause is a `LoadError` / `ConfigError` with one clear sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from attnscope.engine import Progress
from attnscope.errors import ConfigError, LoadError
from attnscope.model.config import ModelConfig, read_json, show
from attnscope.model.llama import Transformer


def read_config(path: Path) -> ModelConfig:
    """The checked config of model directory `path`; errors name ``config.json`` and the key."""
    file = path / "config.json"
    raw = read_config_json(path)
    try:
        return ModelConfig.from_hf(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def read_config_json(path: Path) -> dict:
    """config.json of model directory `path` as a dict (a `LoadError` when it is not a JSON object)."""
    file = path / "config.json"
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise LoadError(f"{file}: expected a JSON object, got a {type(raw).__name__}")
    return raw


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
        raise LoadError(
            f"{index}: malformed index (expected a JSON object whose weight_map maps tensor names to file names)"
        )
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
            self._state: dict[str, torch.Tensor] | None = _torch_load(file)
            return
        from safetensors import SafetensorError, safe_open

        try:
            self._open = safe_open(str(file), framework="pt")  # read when _state is None
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
    counted from names like ``model.layers.11.…`` (None when the names have no such index). A tensor
    that is not floating point is a `LoadError`, as for the native engine (`_Tensors.shape`), but for
    the integer buffers some checkpoints keep (``position_ids``)."""
    import re

    numel, top = 0, -1
    for file in files:
        if file.suffix in PICKLE_SUFFIXES:
            numel += file.stat().st_size // 4
            continue
        tensors = _Tensors(file)  # a valid safetensors file (opened, not read), or a LoadError
        header = tensors._open
        for key in header.keys():
            if not key.endswith("position_ids"):
                tensors.shape(key)  # its dtype: floating point
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


def load_state_dict(
    model: Transformer,
    files: list[Path],
    progress: Progress | None = None,
    open_file: Callable[[Path], TensorSource] = _Tensors,
) -> None:
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
    if model.config.tie_word_embeddings:  # the one of the two that the file has serves as both
        for a, b in (("lm_head.weight", "embed_tokens.weight"), ("embed_tokens.weight", "lm_head.weight")):
            if a not in state and b in state:
                state[a] = state[b]
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
