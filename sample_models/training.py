"""What the sample-model training recipes share: model set-up, optimizer and schedule, the training
step, saving in Hugging Face layout, and the facts about the machine that the model cards report.

The recipes are ``train_tiny_code.py`` (the default sample model, a 4-layer Llama trained on the Python
standard library) and ``train_tiny_induction.py`` (a 2-layer Llama trained to copy, with an induction
circuit). Each keeps its own data, tokenizer, loss, hyperparameters and model card; where they differ
in something this module does, the difference is a parameter (see `Hyperparameters` and `save_model`).

Everything that touches attnscope's model API stands in the first section: `build_model` makes the
network, `forward` runs every forward pass of training and evaluation, and `head_roles_of` scores the
heads. The bundled weights are a function of the recipes' seeds, so this module must not draw random
numbers of its own or change the order of the draws: the recipes then reproduce the bundled weights
bit for bit on the same CPU and torch build.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

import attnscope
from attnscope.backends import get_backend
from attnscope.inspector.heads import HeadRole
from attnscope.model import ModelConfig, Transformer
from attnscope.model.checkpoint import hf_name
from attnscope.model.llama import RMSNorm
from attnscope.model.native import LoadedModel

# ------------------------------------------------------------------------------- attnscope's model API

TRAIN_BACKEND = "sdpa"  # attention backend of training and of the in-training evaluations
SAVED_BACKEND = "eager"  # the reference backend, which the saved model's card figures are measured with


def build_model(config: ModelConfig) -> Transformer:
    """A fresh network for `config`, initialized by `init_weights`."""
    model = Transformer(config)
    init_weights(model)
    return model


def forward(model: Transformer, ids: torch.Tensor, backend: str = TRAIN_BACKEND) -> torch.Tensor:
    """Logits ``[B, T, vocab]`` of `model` for token ids ``[B, T]``, attention by `backend`."""
    return model(ids, attend=get_backend(backend))


def head_roles_of(model: LoadedModel) -> list[list[HeadRole]]:
    """Per layer, per query head, the scores and role of `attnscope.Scope.head_roles`."""
    return attnscope.Scope(model).head_roles()


def load_saved(out: Path) -> LoadedModel:
    """The model saved by `save_model` in `out`, loaded as a user loads it, in float32."""
    return attnscope.load_model(out, dtype="float32")


# ------------------------------------------------------------------------------------------ model


def llama_config(**sizes: int | None) -> ModelConfig:
    """A Llama config with the recipes' common choices: RMSNorm eps 1e-5, RoPE theta 10000, tied
    embeddings; `sizes` gives the rest (vocab, widths, layers, heads, positions, special tokens)."""
    return ModelConfig(model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, **sizes)


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model`, a tied weight once."""
    return list({id(p): p for p in model.parameters()}.values())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in unique_parameters(model))


def init_weights(model: Transformer, std: float = 0.02) -> None:
    """Normal(0, `std`) for embeddings and projections, the residual outputs (``o_proj``, ``down_proj``)
    scaled down by sqrt(2 L) (GPT-2); biases at 0 and RMSNorm weights at 1.

    Only the normal draws use the random generator. A fresh `Transformer` without biases, as both
    recipes build, already has its RMSNorm weights at 1, so for them the last two steps change nothing.
    """
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module_std = std / math.sqrt(2 * n_layers) if name.endswith(("o_proj", "down_proj")) else std
            nn.init.normal_(module.weight, mean=0.0, std=module_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    if model.config.tie_word_embeddings:  # lm_head shares the embedding: keep the embedding's init
        nn.init.normal_(model.embed_tokens.weight, mean=0.0, std=std)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


# ---------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Hyperparameters:
    """AdamW with linear warmup and cosine decay, gradient clipping."""

    lr: float  # peak learning rate, reached at the end of the warmup
    min_lr: float  # end of the cosine decay
    warmup: int  # steps
    weight_decay: float  # on matrices (projections, embedding); none on norm weights and biases
    betas: tuple[float, float]  # AdamW's
    grad_clip: float = 1.0  # max gradient norm
    eps: float = 1e-8  # AdamW's

    def lr_at(self, step: int, steps: int) -> float:
        """Linear warmup to `lr`, then cosine decay to `min_lr` at step `steps` (`min_lr` after it)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, steps - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW over `model`'s parameters: weight decay on matrices only."""
        params = unique_parameters(model)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=self.eps)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hp: Hyperparameters,
    step: int,
    steps: int,
    loss_fn: Callable[[], torch.Tensor],
) -> tuple[float, float]:
    """One optimizer step at the learning rate of `step` of `steps`, on the loss `loss_fn()` (which
    draws its batch): (loss, learning rate)."""
    lr = hp.lr_at(step, steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
    optimizer.step()
    return loss.item(), lr


# ------------------------------------------------------------------------------------------ saving


def dtype_name(dtype: torch.dtype) -> str:
    """``float16`` for torch.float16: the name in config.json and in the model cards."""
    return str(dtype).removeprefix("torch.")


def save_model(
    model: Transformer, tok: Tokenizer, out: Path, *, dtype: torch.dtype, generation: dict, tokenizer_config: dict
) -> None:
    """Hugging Face layout in `out`: ``config.json``, ``generation_config.json`` (`generation`),
    ``model.safetensors`` (HF parameter names, weights in `dtype`, a tied lm_head omitted),
    ``tokenizer.json`` and ``tokenizer_config.json`` (`tokenizer_config`)."""
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    (out / "config.json").write_text(json.dumps(config.to_hf(dtype=dtype_name(dtype)), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensors[hf_name(name)] = tensor.detach().to(dtype).contiguous().clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


# ----------------------------------------------------------------------------------- running a recipe


def parser(description: str, default_out: Path, default_steps: int) -> argparse.ArgumentParser:
    """The options every recipe has: ``--out``, ``--steps``, ``--seed``, ``--threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=default_out, help="output directory (default: %(default)s)")
    p.add_argument("--steps", type=int, default=default_steps, help="training steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    return p


class Run:
    """A recipe's run: seeds torch's global generator, sets the thread count, and keeps the clock for
    the log lines and the 1-minute load averages sampled during training (to tell a busy machine)."""

    def __init__(self, seed: int, threads: int):
        self.t_start = time.perf_counter()
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        self.loads: list[float] = []

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.t_start

    def sample_load(self) -> None:
        self.loads.append(os.getloadavg()[0])

    def mean_load(self) -> float:
        return sum(self.loads) / max(1, len(self.loads))


def cpu_name() -> str:
    """The CPU's model name, for the model card."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dir_size(out: Path) -> int:
    """Bytes of the files directly in `out`."""
    return sum(f.stat().st_size for f in out.iterdir())
