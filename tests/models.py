"""Small random native models for the tests: `random_model` builds one (a `LoadedModel` of our own
Llama-family `Transformer`), `save_hf_dir` writes it as a Hugging Face model directory.

The weights are a function of the arguments only: `torch.manual_seed(seed)`, the network, then every
parameter in `named_parameters` order set to N(0, std) (RMSNorm weights to `norm`), so a test that
asks for the same sizes and seed always gets the same model. The random Hugging Face models (the
reference for parity tests) are `build_hf_model` in tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from attnscope.model import ModelConfig, Transformer
from attnscope.model.checkpoint import hf_name
from attnscope.model.native import LoadedModel


def random_model(*, layers: int, vocab: int, hidden: int, max_positions: int, intermediate: int | None = None,
                 heads: int = 4, kv_heads: int = 2, std: float = 0.2, norm: float | None = 1.0, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 **config_overrides) -> LoadedModel:
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
    config = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         **config_overrides)
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
