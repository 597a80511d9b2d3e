"""How much memory a model and its KV cache need, and whether this machine has it.

Both are computed from the config alone, before anything is allocated, so that a config.json with a
million layers or a prompt with ten million new tokens is refused in a millisecond with the numbers,
instead of running for minutes and then running out of memory.

Available memory is read without extra dependencies: on Linux ``MemAvailable`` of ``/proc/meminfo``
(lowered to what a cgroup v2 memory limit leaves), elsewhere the free (or, failing that, total)
physical memory from ``os.sysconf`` or the Windows API, and on a CUDA device the free memory torch
reports. An address-space limit (``ulimit -v``, ``RLIMIT_AS`` read with `resource`) lowers what
is available on the host to the limit less the address space the process already maps
(``/proc/self/statm``). Where none of these can be read the check is skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from attnscope.engine import Layout
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.model.config import ModelConfig

# Python objects of one decoder block (its modules and parameter handles) cost ~28 KiB even on the
# meta device: a config with a million layers of two dimensions needs ~28 GB before any weight.
LAYER_OVERHEAD_BYTES = 32 * 1024


def parameter_count(config: ModelConfig) -> int:
    """The number of parameters of the `Transformer` built from `config` (tied embeddings once)."""
    hidden, inner, dim = config.hidden_size, config.intermediate_size, config.head_dim
    q_width = config.num_attention_heads * dim
    kv_width = config.num_key_value_heads * dim
    attention = hidden * (q_width + 2 * kv_width) + q_width * hidden
    if config.qkv_bias:
        attention += q_width + 2 * kv_width
    if config.o_bias:
        attention += hidden
    mlp = 3 * hidden * inner + (2 * inner + hidden if config.mlp_bias else 0)
    norms = 2 * hidden + (2 * dim if config.qk_norm else 0)
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_hidden_layers * (attention + mlp + norms) + hidden


def model_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes the loaded model holds: its parameters in `dtype` and the objects of its layers."""
    return parameter_count(config) * dtype.itemsize + config.num_hidden_layers * LAYER_OVERHEAD_BYTES


def kv_cache_bytes(layout: Layout, batch: int, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of a KV cache of `batch` rows and `max_len` positions: keys and values of every layer."""
    return 2 * layout.n_layers * batch * layout.n_kv_heads * max_len * layout.head_dim * dtype.itemsize


def format_bytes(n: int | float) -> str:
    """Bytes in binary units with three significant figures: ``512 B``, ``1.5 GiB``, ``3.2e+06 PiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def format_count(n: int) -> str:
    """An integer with thousands separators, or in scientific notation when it is astronomically large."""
    return f"{n:,}" if n < 10**15 else f"{n:.3g}"


def _read_int(file: str) -> int | None:
    try:
        return int(Path(file).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _meminfo_available() -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves (reclaimable page cache counted as free), or None."""
    limit = _read_int("/sys/fs/cgroup/memory.max")  # "max" (no limit) reads as None
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is None or used is None:
        return None
    inactive = 0
    try:
        for line in Path("/sys/fs/cgroup/memory.stat").read_text().splitlines():
            if line.startswith("inactive_file "):
                inactive = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return max(0, limit - used + inactive)


def _address_space_left() -> int | None:
    """What an address-space limit (``ulimit -v``) leaves this process, or None without one."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    try:
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = 0
    return max(0, limit - mapped)


def _sysconf_memory() -> int | None:
    """Free physical memory where the OS reports it, else the total (an upper bound still worth checking)."""
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            count, size = os.sysconf(pages), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            continue
        if count > 0 and size > 0:
            return count * size
    return None


def _windows_available() -> int | None:
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [
            ("length", ctypes.c_ulong),
            ("load", ctypes.c_ulong),
            ("total", ctypes.c_ulonglong),
            ("available", ctypes.c_ulonglong),
            ("total_page", ctypes.c_ulonglong),
            ("available_page", ctypes.c_ulonglong),
            ("total_virtual", ctypes.c_ulonglong),
            ("available_virtual", ctypes.c_ulonglong),
            ("available_extended", ctypes.c_ulonglong),
        ]

    status = MemoryStatus()
    status.length = ctypes.sizeof(MemoryStatus)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    return int(status.available)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on `device` (host memory for ``cpu``), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    address_space = _address_space_left()
    if sys.platform.startswith("linux"):
        known = [n for n in (_meminfo_available(), _cgroup_available(), address_space) if n is not None]
        if known:
            return min(known)
    if sys.platform == "win32":
        try:
            return _windows_available()
        except (OSError, AttributeError):
            return None
    known = [n for n in (_sysconf_memory(), address_space) if n is not None]
    return min(known) if known else None


def _where(device: torch.device) -> str:
    return "on this machine" if device.type == "cpu" else f"on {device}"


def _short_of(need: int, device: torch.device | str) -> tuple[int, torch.device] | None:
    """(bytes available, where) of the first place `need` bytes do not fit: host memory, where weights
    are read, then the device when it is a GPU; None when they fit (or nothing is known)."""
    for where in dict.fromkeys([torch.device("cpu"), torch.device(device)]):
        free = available_memory(where)
        if free is not None and need > free:
            return free, where
    return None


def require_model_fits(
    config: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu", source: str = "config.json"
) -> None:
    """A `ConfigError` naming the sizes when the model of `config` in `dtype` cannot fit in the memory
    available (host memory, where weights are read, and the device's when it is a GPU); `source` names
    where the config came from."""
    need = model_bytes(config, dtype)
    short = _short_of(need, device)
    if short is not None:
        free, where = short
        raise ConfigError(
            f"{source} describes {config.num_hidden_layers:,} layers and {format_count(parameter_count(config))} "
            f"parameters: about {format_bytes(need)} in {str(dtype).removeprefix('torch.')}, more than the "
            f"{format_bytes(free)} of memory available {_where(where)}"
        )


def require_weights_fit(numel: int, dtype: torch.dtype, device: torch.device | str, path: Path) -> None:
    """A `LoadError` naming the sizes when `numel` weights in `dtype` cannot fit in the memory available
    (host memory, where weights are read, and the device's when it is a GPU)."""
    need = numel * dtype.itemsize
    short = _short_of(need, device)
    if short is not None:
        free, where = short
        raise LoadError(
            f"{path}: the weights hold {format_count(numel)} parameters, about {format_bytes(need)} "
            f"in {str(dtype).removeprefix('torch.')}, more than the {format_bytes(free)} of memory "
            f"available {_where(where)}"
        )


def require_kv_cache_fits(
    layout: Layout, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> None:
    """A `UserError` naming the sizes when a KV cache of `batch` rows × `max_len` positions in `dtype`
    cannot fit in the memory available on `device`. An engine calls it before allocating a cache."""
    device = torch.device(device)
    need = kv_cache_bytes(layout, batch, max_len, dtype)
    free = available_memory(device)
    if free is not None and need > free:
        raise UserError(
            f"a KV cache of {batch} × {format_count(max_len)} positions needs {format_bytes(need)} (2 × "
            f"{layout.n_layers:,} layers × {layout.n_kv_heads} kv heads × head_dim "
            f"{layout.head_dim} × {dtype.itemsize} bytes per position), more than the {format_bytes(free)} "
            f"of memory available {_where(device)}: ask for fewer new tokens or a shorter prompt"
        )


def require_float32_copy_fits(module: torch.nn.Module, device: torch.device | str) -> None:
    """A `MemoryError` naming the sizes when a float32 copy of `module`'s floating parameters and
    buffers (what `attnscope.model.compute.in_float32` makes for one call) cannot fit beside the model in
    the memory available (host memory, and the device's when it is a GPU)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}
    need = sum(t.numel() for t in tensors.values()) * 4
    short = _short_of(need, device)
    if short is not None:
        free, where = short
        raise MemoryError(
            f"a float32 copy of the weights needs {format_bytes(need)}, more than the "
            f"{format_bytes(free)} of memory available {_where(where)}"
        )
