"""Shared fixtures: tiny random Hugging Face models saved with ``save_pretrained``.

Every model is small (hidden 64, 2 layers, 4 query heads / 2 kv heads, vocab 100) so the whole
suite runs in seconds on a CPU. Weights are random, with larger-than-default initialization so the
attention patterns are far from uniform (a RoPE or mask bug must show), and with the RMSNorm
weights and the biases perturbed so that q/k norms and biases matter.

`zoo[name]` builds a model once per session (lazily) and gives its directory and the HF model
itself (float32, eager attention) as the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import_triton_for_the_interpreter() -> None:
    """Triton decides at its first import whether its kernels (and its own tl.* library) run in the
    interpreter. Import it here, with TRITON_INTERPRET=1 when there is no GPU, before any test
    module can import it otherwise; then restore the environment, so the triton backend still
    reports itself unavailable where a test expects that (tests/test_kernels.py sets the variable
    around its own tests)."""
    import sys

    if torch.cuda.is_available() or "triton" in sys.modules:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_for_the_interpreter()

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
    import transformers

    _quiet_transformers()
    config_cls, model_cls, overrides = MODEL_SPECS[name]
    config = getattr(transformers, config_cls)(**{**_COMMON, **overrides, **sizes})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("norm.weight"):
                param.normal_(1.0, 0.2)
            elif pname.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model


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


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on one thread: the tiny models' ops are far too small to gain from threads, and on a
    busy 2-core machine OpenMP threads contending for cores make them ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> ModelZoo:
    return ModelZoo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session", params=PARITY_MODELS)
def tiny(request, zoo) -> TinyModel:
    """Each tiny model in turn."""
    return zoo[request.param]


@pytest.fixture
def model_copy(zoo, tmp_path):
    """A function name -> a fresh copy of that model's directory, free to be damaged by the test."""
    import shutil

    def copy(name: str = "llama-gqa") -> Path:
        dst = tmp_path / name
        shutil.copytree(zoo[name].path, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    """The sample models by name (`attnscope.samples.sample_models()`); fails, never skips, when a
    committed one is missing (see tests/support/samples.py)."""
    from support.samples import committed_samples

    return committed_samples()


@pytest.fixture(scope="session")
def tiny_code(samples) -> Path:
    """The directory of the committed tiny-code sample model."""
    return samples["tiny-code"]
