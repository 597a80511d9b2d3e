"""Model factories for the tests.

- `random_model` builds a small random native model (a `LoadedModel` of our own Llama-family
  `Transformer`), `save_hf_dir` writes one as a Hugging Face model directory. The weights are a
  function of the arguments only: `torch.manual_seed(seed)`, the network, then every parameter in
  `named_parameters` order set to N(0, std) (RMSNorm weights to `norm`), so a test that asks for the
  same sizes and seed always gets the same model.
- `build_hf_model` builds a random tiny Hugging Face model of one of `MODEL_SPECS` (the reference of
  the parity tests); `ModelZoo` (the `zoo` fixture of tests/conftest.py) builds and saves each once.
  Every one is small (hidden 64, 2 layers, 4 query heads / 2 kv heads, vocab 100), with
  larger-than-default initialization so the attention patterns are far from uniform (a RoPE or mask
  bug must show), and with the RMSNorm weights and the biases perturbed so that q/k norms and biases
  matter.
- `build_architecture` builds a random model of one of `ARCHITECTURES`, the transformers
  architectures the hf engine is tested on (tests/test_hf_engine.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from attnscope.model import ModelConfig, Transformer
from attnscope.model.checkpoint import hf_name
from attnscope.model.native import LoadedModel

# ---- native models ---------------------------------------------------------------------------------


def random_model(
    *,
    layers: int,
    vocab: int,
    hidden: int,
    max_positions: int,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    std: float = 0.2,
    norm: float | None = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **config_overrides,
) -> LoadedModel:
    """A random model (eval mode, no tokenizer) of these sizes.

    Args:
        intermediate: the MLP's inner size (default 2 × hidden).
        std: every parameter but the norms is drawn from N(0, std).
        norm: the value of every norm weight; None draws them from N(0, std) like the rest.
        seed: the torch seed set before the network is built.
        dtype / device: where the model goes once drawn (the weights are drawn in float32 on the CPU).
        config_overrides: any other `ModelConfig` field (sliding_window, layer_types, bos_token_id, ...).
    """
    torch.manual_seed(seed)
    if intermediate is None:
        intermediate = 2 * hidden
    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        **config_overrides,
    )
    net = Transformer(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if norm is not None and "norm" in name:
                p.fill_(norm)
            else:
                p.copy_(torch.randn_like(p) * std)
    return LoadedModel(net.to(device=device, dtype=dtype), None, "random", Path("."))


def save_hf_dir(model: LoadedModel | Transformer, path: Path, tokenizer_from: Path | None = None) -> Path:
    """Write `model` as a HF model directory at `path` (which must not exist yet): config.json and
    model.safetensors, and tokenizer.json / tokenizer_config.json copied from the model directory
    `tokenizer_from` when given (without them attnscope runs on token ids)."""
    net = model.net if isinstance(model, LoadedModel) else model
    dtype = str(next(net.parameters()).dtype).removeprefix("torch.")
    path.mkdir()
    (path / "config.json").write_text(json.dumps(net.config.to_hf(dtype)))
    save_file({hf_name(k): v.contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (path / name).write_bytes((tokenizer_from / name).read_bytes())
    return path


# ---- random Hugging Face models ---------------------------------------------------------------------


def random_hf_model(
    config_cls: str,
    model_cls: str,
    config: dict[str, Any],
    seed: int,
    perturb: Callable[[str, torch.nn.Parameter], None],
):
    """A random-initialized transformers `model_cls` (float32, eval) of `config_cls(**config)`, drawn
    after `torch.manual_seed(seed)`; then `perturb(name, param)` on every parameter in order, without
    grad."""
    import transformers

    _quiet_transformers()
    hf_config = getattr(transformers, config_cls)(**config)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(hf_config).float().eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            perturb(pname, param)
    return model


# ---- the tiny Hugging Face models of the parity tests -------------------------------------------------

VOCAB = 100
MAX_POSITIONS = 128
SEQ_LEN = 48  # >= 48 tokens: several times the sliding window of 8

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_POSITIONS,
    initializer_range=0.1,
    attn_implementation="eager",
)

# name -> (HF config class name, HF model class name, config overrides)
MODEL_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama-gqa": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-llama3-rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                # head_dim 16: wavelengths 6.3 .. 2e4, so with 64 the high, medium (smoothed) and low
                # frequency branches of llama3 scaling are all exercised
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "llama-linear-bias-tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
        },
    ),
    "mistral-sliding": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen2-sliding": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
}
PARITY_MODELS = list(MODEL_SPECS)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_hf_model(name: str, seed: int = 0, **sizes):
    """A random-initialized HF causal LM of spec `name` (float32, eval, eager attention); `sizes`
    override the config's (hidden_size, vocab_size, ...)."""

    def perturb(pname: str, param: torch.nn.Parameter) -> None:
        if pname.endswith("norm.weight"):
            param.normal_(1.0, 0.2)
        elif pname.endswith("bias"):
            param.normal_(0.0, 0.1)

    config_cls, model_cls, overrides = MODEL_SPECS[name]
    return random_hf_model(config_cls, model_cls, {**_COMMON, **overrides, **sizes}, seed, perturb)


@dataclass
class TinyModel:
    name: str
    path: Path
    hf: Any  # the transformers model: the reference

    @property
    def vocab_size(self) -> int:
        return self.hf.config.vocab_size

    def ids(self, length: int = SEQ_LEN, seed: int = 1) -> torch.Tensor:
        return random_ids(length, self.vocab_size, seed)

    @torch.no_grad()
    def hf_forward(self, ids: torch.Tensor):
        """HF eager forward with attentions: (logits [1, T, V], tuple of [1, H, T, T] per layer)."""
        out = self.hf(input_ids=ids, output_attentions=True, use_cache=False)
        return out.logits, out.attentions


def random_ids(length: int, vocab: int = VOCAB, seed: int = 1) -> torch.Tensor:
    """Token ids ``[1, length]`` from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, length), generator=gen)


class ModelZoo:
    """Builds each tiny model once (lazily) and saves it under `root/name`."""

    def __init__(self, root: Path):
        self.root = root
        self._models: dict[str, TinyModel] = {}
        self._loaded: dict[tuple[str, str], Any] = {}

    def __getitem__(self, name: str) -> TinyModel:
        if name not in self._models:
            hf = build_hf_model(name, seed=sorted(MODEL_SPECS).index(name))
            path = self.root / name
            hf.save_pretrained(path)
            self._models[name] = TinyModel(name, path, hf)
        return self._models[name]

    def loaded(self, name: str, dtype: str = "float32"):
        """The attnscope `LoadedModel` of `name` (shared: tests must not modify it)."""
        key = (name, dtype)
        if key not in self._loaded:
            import attnscope

            self._loaded[key] = attnscope.load_model(self[name].path, dtype=dtype)
        return self._loaded[key]


# ---- the architectures of the hf engine ---------------------------------------------------------------

ALTERNATING = ["sliding_attention", "full_attention"]
ARCHITECTURE_COMMON = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# name -> (config class, model class, overrides, what the architecture exercises)
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "GQA, RoPE"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}, "q/k RMSNorm per head, head_dim ≠ hidden/heads"),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": 8,
            "layer_types": ALTERNATING,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 30.0,
            "query_pre_attn_scalar": 16,
        },
        "attention logit soft-capping, alternating sliding-window and global layers",
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"head_dim": 16, "sliding_window": 8, "layer_types": ALTERNATING, "query_pre_attn_scalar": 16},
        "q/k norms, local and global RoPE bases, sliding-window layers",
    ),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": 8}, "fused qkv projection, sliding window"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, "q/k RMSNorm over all heads, post-norm blocks"),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        {"attention_multiplier": 0.3, "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 4.0},
        "a custom attention scale (attention_multiplier)",
    ),
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": 8,
            "layer_types": ALTERNATING,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": 64,
            "initializer_range": 0.05,
        },
        "attention sinks, mixture of experts, alternating sliding windows",
    ),
}


def build_architecture(name: str, seed: int = 0):
    """A random `name` model of `ARCHITECTURES` (float32, eval, eager attention), q/k weights scaled up
    so attention is far from uniform; skips the test when this transformers lacks the architecture."""
    import transformers

    config_cls, model_cls, overrides, _ = ARCHITECTURES[name]
    if not hasattr(transformers, config_cls):
        pytest.skip(f"transformers {transformers.__version__} has no {config_cls}")

    def perturb(pname: str, param: torch.nn.Parameter) -> None:
        if "norm" in pname and pname.endswith("weight"):
            param.normal_(1.0, 0.2)
        elif pname.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
            param.mul_(3.0)
        elif pname.endswith("sinks"):
            param.normal_(0.0, 1.0)

    return random_hf_model(
        config_cls, model_cls, {**ARCHITECTURE_COMMON, **overrides, "attn_implementation": "eager"}, seed, perturb
    )
