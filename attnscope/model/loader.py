"""Loading a model: what a name or path means, which dtype and device, and which loader reads it.

`load_model` resolves a bundled sample model's name, a directory, a GGUF file or a Hub id in the
local cache (`resolve_model_path`), the dtype and the device, and hands the path to the loader of
its kind: `attnscope.model.native.load_native` (a Hugging Face directory into our own model),
`attnscope.model.gguf.load_gguf`, `attnscope.hf.load` (transformers' model) or `attnscope.hf.load_gguf`
(a GGUF file through transformers). Which engine ``auto`` means is decided from config.json's
``model_type``, or from a GGUF file's ``general.architecture`` (`gguf_engine`). Reading the files
themselves is `attnscope.model.checkpoint`'s.

Every problem a user can cause is a `LoadError` / `ConfigError` / `UserError` with one clear sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from attnscope.engine import Engine, Progress
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.model.checkpoint import read_config_json
from attnscope.model.config import SUPPORTED_MODEL_TYPES, show
from attnscope.model.native import load_native
from attnscope.samples import DEFAULT_MODEL, sample_models

if TYPE_CHECKING:
    from attnscope.model.gguf import GGUFFile

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


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
    if not str(name_or_path).strip():  # Path("") is the current directory
        raise LoadError("the model name is empty (give a sample model, a directory, a GGUF file or a Hub id)")
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
        from attnscope.model.gguf import require_regular_file

        require_regular_file(path)  # from its stat: a FIFO or a device is never opened
        if is_gguf(path):
            return path
        raise LoadError(
            f"{path} is not a directory or a GGUF file (expected a Hugging Face model directory or a .gguf file)"
        )
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
    return (
        len(parts) == 2
        and all(parts)
        and all(set(p) <= allowed for p in parts)
        and not any(p in (".", "..") for p in parts)
    )


def _hub_snapshot(repo_id: str) -> Path:
    """The directory of `repo_id`'s snapshot in the local Hugging Face cache; nothing is downloaded."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise LoadError(
            f"model {repo_id!r} not found: no such path, and reading the Hugging Face cache "
            'needs huggingface_hub (pip install "attnscope[hf]")'
        ) from None
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise LoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache: download it first with "
            f"`hf download {repo_id}` (attnscope never downloads)"
        ) from None
    _require_inside_cache(path, repo_id)
    if not (path / "config.json").is_file():
        raise LoadError(f"{path} (the cached snapshot of {repo_id}) has no config.json")
    return path


def _require_inside_cache(path: Path, repo_id: str) -> None:
    """A `LoadError` when the snapshot `path` of `repo_id`, or a file in it, resolves outside the
    repository's folder of the Hugging Face cache (a ``refs/main`` holding ``../..``, a link to
    elsewhere): what the cache gives is read only from the cache."""
    import os

    from huggingface_hub import constants

    folder = Path(os.path.realpath(Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"))
    snapshots = folder / "snapshots"
    real = Path(os.path.realpath(path))
    if real.parent != snapshots:
        raise LoadError(
            f"the cached snapshot of {repo_id} is {real}, not a snapshot in {snapshots} (check refs/main there)"
        )
    for root, dirs, files in os.walk(real):
        for name in dirs + files:
            entry = Path(os.path.realpath(Path(root) / name))
            if not entry.is_relative_to(folder):
                raise LoadError(
                    f"{Path(root) / name} (in the cached snapshot of {repo_id}) leads to {entry}, outside "
                    f"the cache's folder {folder}"
                )


ENGINES = ("auto", "native", "hf", "llama.cpp")


def gguf_engine(file: GGUFFile) -> str:
    """The engine ``auto`` picks for a GGUF file (its metadata read by `GGUFFile`) by its
    ``general.architecture``: native for the architectures the native engine reads, hf for those
    transformers reads; a `ConfigError` naming what each engine reads for any other."""
    from attnscope import hf
    from attnscope.model import gguf

    arch = file.architecture
    if arch in gguf.ARCHITECTURES:
        return "native"
    readable = hf.gguf_architectures()
    if arch in readable:
        return "hf"
    where = (
        f"the hf engine reads {', '.join(readable)}"
        if readable
        else 'the hf engine reads more with transformers: pip install "attnscope[hf]"'
    )
    raise ConfigError(
        f"{file.path}: unsupported GGUF architecture {show(arch)} (the native engine reads "
        f"{', '.join(gguf.ARCHITECTURES)}; {where})"
    )


def validate_engine(engine: str) -> None:
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
            (read with the ``gguf`` package: ``pip install "attnscope[gguf]"``), or ``org/name`` of a
            snapshot in the Hugging Face cache (never downloaded here).
        dtype: torch dtype or its name: float32, float16, bfloat16.
        device: cpu, cuda, cuda:N.
        engine: ``native`` (attnscope's own Llama-family model: llama, mistral, qwen2, qwen3), ``hf``
            (transformers' model, watched through its AttentionInterface; any causal LM; a GGUF file
            as transformers loads it, dequantized), or ``auto``: native for the native model types
            (GGUF: the architectures llama, qwen2, qwen3), else hf; or ``llama.cpp``: a GGUF file run by
            llama.cpp itself (llama-cpp-python: ``pip install "attnscope[llamacpp]"``), its KV cache
            of type `dtype`, watched through its eval callback (`attnscope.llamacpp`).
        allow_pickle: accept ``pytorch_model.bin`` checkpoints (read with weights_only=True).
        progress: called as progress(done, total, description) while weights load (native engine).

    Returns:
        An engine: a `LoadedModel` (native; ``.net`` is the `Transformer`) or an
        `attnscope.hf.HFEngine` (``.model`` is the transformers model); both have ``.tokenizer``.
    """
    validate_engine(engine)
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = resolve_model_path(name_or_path)
    if engine == "llama.cpp":
        if not path.is_file():
            raise UserError(f"{path} is a model directory: the llama.cpp engine runs GGUF files")
        from attnscope import llamacpp

        return llamacpp.load(path, torch_dtype, dev)
    if path.is_file():
        from attnscope.model.gguf import GGUFFile, load_gguf

        file = GGUFFile(path)  # the metadata and the tensor table; no tensor is read
        if engine == "auto":
            engine = gguf_engine(file)
        if engine == "hf":
            from attnscope import hf

            return hf.load_gguf(file, torch_dtype, dev)
        return load_gguf(file, torch_dtype, dev, progress)
    if engine == "auto":
        model_type = read_config_json(path).get("model_type")
        # a model_type that is not a string is a broken config: the native loader's error says so
        engine = "hf" if isinstance(model_type, str) and model_type not in SUPPORTED_MODEL_TYPES else "native"
    if engine == "hf":
        from attnscope import hf

        return hf.load(path, torch_dtype, dev, allow_pickle=allow_pickle)
    return load_native(path, torch_dtype, dev, allow_pickle=allow_pickle, progress=progress)
