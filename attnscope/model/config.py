"""Model configuration: one dataclass for the Llama family, read from a Hugging Face `config.json`.

Covers the HF ``model_type``s llama, mistral, qwen2 and qwen3. Both config formats are read: the
transformers 5 ``rope_parameters`` dict and the older ``rope_theta`` + ``rope_scaling`` pair.
Anything that would change the computation and that the model does not implement is refused with a
`ConfigError` naming it, never silently ignored.

Every field is checked once, when the config is built, before anything is allocated from it: sizes
are integers (never booleans or floats) in range, epsilons and rope figures finite and positive,
token ids inside the vocabulary. A wrong value is a `ConfigError` naming the key and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnscope.errors import ConfigError, LoadError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")
INT64_MAX = 2**63 - 1  # what torch can index with; no size may exceed it
# More layers than any model has. The bound keeps the per-layer lists of a config small whatever
# config.json says; whether the layers' weights fit is `attnscope.model.memory`'s question.
MAX_LAYERS = 1_000_000


def read_json(file: Path) -> Any:
    """The parsed content of a JSON file; a `LoadError` naming the file when it cannot be read, is not
    UTF-8 or is not JSON."""
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LoadError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise LoadError(f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of too many digits, nesting
        raise LoadError(f"{file}: malformed JSON ({exc})") from None


def show(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, shortened when long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_int(key: str, value: Any, minimum: int = 1, maximum: int = INT64_MAX) -> int:
    """`value` when it is an integer (not a bool) from `minimum` to `maximum`, else a `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {show(value)}")
    if value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {show(value)}")
    if value > maximum:
        raise ConfigError(f"{key} must be an integer <= {maximum}, got {show(value)}")
    return value


def validate_positive(key: str, value: Any) -> float:
    """`value` as a float when it is a finite number > 0 (not a bool), else a `ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{key} must be a finite number > 0, got {show(value)}")
    return number


def validate_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {show(value)}")
    return value


def validate_token_ids(key: str, value: Any, vocab_size: int, *, several: bool) -> None:
    """A token id (or, with `several`, a list of them) inside ``[0, vocab_size)``, or None."""
    if value is None:
        return
    ids = value if several and isinstance(value, list) else [value]
    kind = "an integer or a list of integers" if several else "an integer"
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int):
            raise ConfigError(f"{key} must be {kind}, got {show(value)}")
        if not 0 <= token < vocab_size:
            raise ConfigError(f"{key} {token} is outside the vocabulary (vocab_size {vocab_size})")


@dataclass
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512  # SwiGLU inner size
    num_hidden_layers: int = 4
    num_attention_heads: int = 8  # query heads (Hq)
    num_key_value_heads: int = 2  # kv heads (Hkv); Hq % Hkv == 0
    # None: hidden_size // num_attention_heads; an int once built (__post_init__)
    head_dim: int = None  # type: ignore[assignment]
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", "factor": ..., ...}
    qkv_bias: bool = False  # bias on q/k/v projections (llama attention_bias, always on in qwen2)
    o_bias: bool = False  # bias on the output projection (llama/qwen3 attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (qwen3)
    sliding_window: int | None = None  # window of the layers whose type is "sliding_attention"
    layer_types: list[str] = field(default_factory=list)  # "full_attention" | "sliding_attention"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            validate_int(name, getattr(self, name))
        validate_int("num_hidden_layers", self.num_hidden_layers, maximum=MAX_LAYERS)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}) and config.json gives no head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        validate_int("head_dim", self.head_dim)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        validate_positive("rms_norm_eps", self.rms_norm_eps)
        validate_positive("rope_theta", self.rope_theta)
        self.rope_scaling = validate_rope_scaling(self.rope_scaling)
        for name in ("qkv_bias", "o_bias", "mlp_bias", "qk_norm", "tie_word_embeddings"):
            validate_bool(name, getattr(self, name))
        if self.sliding_window is not None:
            validate_int("sliding_window", self.sliding_window)
        validate_token_ids("bos_token_id", self.bos_token_id, self.vocab_size, several=False)
        validate_token_ids("eos_token_id", self.eos_token_id, self.vocab_size, several=True)
        if not isinstance(self.layer_types, list):
            raise ConfigError(f"layer_types must be a list of layer types, got {show(self.layer_types)}")
        if not self.layer_types:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        for kind in self.layer_types:
            if not isinstance(kind, str) or kind not in LAYER_TYPES:
                raise ConfigError(
                    f"unsupported layer type {show(kind)} in layer_types (supported: {', '.join(LAYER_TYPES)})"
                )
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ConfigError("a layer uses sliding_attention but config.json sets no sliding_window")

    @property
    def group_size(self) -> int:
        """Query heads per kv head: query head h reads kv head h // group_size."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build a config from the dict of a Hugging Face ``config.json``.

        Null stands for a key that is absent (its default); ``num_key_value_heads`` absent or null
        means one kv head per query head, as in transformers, and any other value is checked as given.
        """
        if not isinstance(cfg, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {show(cfg)}")

        def get(key: str, default: Any = None) -> Any:
            value = cfg.get(key)
            return default if value is None else value

        model_type = cfg.get("model_type")
        if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {show(model_type)} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        act = get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"unsupported hidden_act {show(act)} (supported: silu)")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in cfg:
                raise ConfigError(f"config.json needs an integer {key}")
        layers = validate_int("num_hidden_layers", cfg["num_hidden_layers"], maximum=MAX_LAYERS)

        rope_theta, rope_scaling = _read_rope(cfg)
        attention_bias = validate_bool("attention_bias", get("attention_bias", False))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        elif model_type == "mistral":
            qkv_bias = o_bias = False
        else:
            qkv_bias = o_bias = attention_bias

        sliding_window = cfg.get("sliding_window")
        layer_types = get("layer_types", [])
        if not isinstance(layer_types, list):
            raise ConfigError(f"layer_types must be a list of layer types, got {show(layer_types)}")
        if model_type in ("qwen2", "qwen3"):
            if not validate_bool("use_sliding_window", get("use_sliding_window", False)):
                sliding_window = None
            if not layer_types and sliding_window is not None:
                first_sliding = validate_int("max_window_layers", get("max_window_layers", layers), minimum=0)
                layer_types = ["full_attention"] * min(first_sliding, layers)
                layer_types += ["sliding_attention"] * (layers - len(layer_types))
        elif model_type == "llama":
            sliding_window = None

        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=get("num_key_value_heads", cfg["num_attention_heads"]),
            head_dim=cfg.get("head_dim"),  # type: ignore[arg-type]  # None: derived in __post_init__
            max_position_embeddings=get("max_position_embeddings", 2048),
            rms_norm_eps=get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=validate_bool("mlp_bias", get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            layer_types=list(layer_types),
            tie_word_embeddings=validate_bool("tie_word_embeddings", get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=cfg.get("eos_token_id"),
        )

    def to_hf(self, dtype: str = "float32") -> dict[str, Any]:
        """The ``config.json`` dict of this config (llama/mistral/qwen2/qwen3 layout); `from_hf` reads
        it back to an equal config."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        if self.o_bias and not self.qkv_bias:
            raise ConfigError("an output-projection bias without q/k/v biases has no Hugging Face config")
        extra: dict[str, Any] = {}
        if self.model_type in ("qwen2", "qwen3"):
            sliding = [i for i, kind in enumerate(self.layer_types) if kind == "sliding_attention"]
            extra = {
                "use_sliding_window": bool(sliding),
                "max_window_layers": sliding[0] if sliding else self.num_hidden_layers,
            }
        return {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "attention_bias": self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
            **extra,
        }


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _read_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from either config format; refuses unsupported kinds."""
    dicts = {key: cfg.get(key) for key in ("rope_scaling", "rope_parameters")}
    for key, value in dicts.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{key} must be an object or null, got {show(value)}")
    params, scaling = dicts["rope_parameters"] or {}, dicts["rope_scaling"] or {}
    if "full_attention" in params or "sliding_attention" in params:
        raise ConfigError("per-layer-type rope_parameters are not supported")
    merged = {**scaling, **params}

    def name(key: str) -> str:  # where config.json holds `key` of the merged dict
        return f"{'rope_parameters' if key in params else 'rope_scaling'}.{key}"

    def pick(key: str, default: Any) -> tuple[str, Any]:  # (name, value): the rope dicts', else top level
        if merged.get(key) is not None:
            return name(key), merged[key]
        return key, default if cfg.get(key) is None else cfg[key]

    theta = validate_positive(*pick("rope_theta", 10000.0))
    key, partial = pick("partial_rotary_factor", 1.0)
    if validate_positive(key, partial) != 1.0:
        raise ConfigError(f"unsupported rope option {key} {show(partial)} (supported: 1)")
    rope_type = merged.get("rope_type")
    if rope_type is None:
        rope_type = "default" if merged.get("type") is None else merged["type"]
    scaling = {"rope_type": rope_type, **{k: v for k, v in merged.items() if k in _ROPE_KEYS}}
    return theta, validate_rope_scaling(scaling, name)


# what each supported rope type reads from the scaling dict
_ROPE_KEYS = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
_ROPE_NEEDS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def validate_rope_scaling(scaling: Any, name=lambda key: f"rope_scaling.{key}") -> dict[str, Any] | None:
    """The rope scaling dict reduced to what its type reads, checked (None for default rope); `name`
    gives the config.json name of a key for error messages."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be an object or null, got {show(scaling)}")
    rope_type = scaling.get("rope_type", "default")
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"unsupported rope_scaling type {show(rope_type)} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return None
    for key in _ROPE_NEEDS[rope_type]:
        if key not in scaling:
            raise ConfigError(f"rope_scaling of type {rope_type!r} needs {key!r}")
        if key == "original_max_position_embeddings":
            validate_int(name(key), scaling[key])
        else:
            validate_positive(name(key), scaling[key])
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(
            f"{name('high_freq_factor')} ({show(scaling['high_freq_factor'])}) must be larger than "
            f"{name('low_freq_factor')} ({show(scaling['low_freq_factor'])})"
        )
    return {"rope_type": rope_type, **{key: scaling[key] for key in _ROPE_NEEDS[rope_type]}}
