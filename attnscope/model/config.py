"""Model configuration: one dataclass for the Llama family, read from a Hugging Face `config.json`.

Covers the HF ``model_type``s llama, mistral, qwen2 and qwen3. Both config formats are read: the
transformers 5 ``rope_parameters`` dict and the older ``rope_theta`` + ``rope_scaling`` pair.
Anything that would change the computation and that the model does not implement is refused with a
`ConfigError` naming it, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnscope.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512  # SwiGLU inner size
    num_hidden_layers: int = 4
    num_attention_heads: int = 8  # query heads (Hq)
    num_key_value_heads: int = 2  # kv heads (Hkv); Hq % Hkv == 0
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
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
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}) and config.json gives no head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"config {name} must be a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.layer_types:
            kind = "sliding_attention" if self.sliding_window else "full_attention"
            self.layer_types = [kind] * self.num_hidden_layers
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        for kind in self.layer_types:
            if kind not in ("full_attention", "sliding_attention"):
                raise ConfigError(f"unsupported layer type {kind!r} (supported: full_attention, "
                                  "sliding_attention)")
            if kind == "sliding_attention" and not self.sliding_window:
                raise ConfigError("a layer uses sliding_attention but config.json sets no sliding_window")

    @property
    def group_size(self) -> int:
        """Query heads per kv head: query head h reads kv head h // group_size."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build a config from the dict of a Hugging Face ``config.json``."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"unsupported hidden_act {act!r} (supported: silu)")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if not isinstance(cfg.get(key), int):
                raise ConfigError(f"config.json needs an integer {key}, got {cfg.get(key)!r}")

        rope_theta, rope_scaling = _read_rope(cfg)
        attention_bias = bool(cfg.get("attention_bias", False))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        elif model_type == "mistral":
            qkv_bias = o_bias = False
        else:
            qkv_bias = o_bias = attention_bias

        sliding_window = cfg.get("sliding_window")
        layer_types = cfg.get("layer_types")
        if model_type in ("qwen2", "qwen3"):
            if not cfg.get("use_sliding_window", False):
                sliding_window = None
            if layer_types is None:
                first_sliding = cfg.get("max_window_layers", cfg["num_hidden_layers"])
                layer_types = [
                    "sliding_attention" if sliding_window and i >= first_sliding else "full_attention"
                    for i in range(cfg["num_hidden_layers"])
                ]
        elif model_type == "llama":
            sliding_window = None

        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            head_dim=cfg.get("head_dim"),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
            layer_types=list(layer_types or []),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
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
            extra = {"use_sliding_window": bool(sliding),
                     "max_window_layers": sliding[0] if sliding else self.num_hidden_layers}
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
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if "full_attention" in params or "sliding_attention" in params:
        raise ConfigError("per-layer-type rope_parameters are not supported")
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"unsupported rope_scaling type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if float(merged.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError("unsupported rope option partial_rotary_factor != 1")
    if rope_type == "default":
        return theta, None
    needed = ["factor"]
    if rope_type == "llama3":
        needed += ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
    for key in needed:
        if key not in merged:
            raise ConfigError(f"rope_scaling of type {rope_type!r} needs {key!r}")
    return theta, {"rope_type": rope_type, **{k: merged[k] for k in needed}}
