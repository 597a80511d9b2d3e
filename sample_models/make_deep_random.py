"""Make `deep-random`: a 24-layer Llama with random weights, deep enough for rounding to accumulate.

    python sample_models/make_deep_random.py     # writes sample_models/deep-random/

What it is for: in float16 and bfloat16 the rounding of every layer adds up over depth, so that the
full forward and the token-by-token pass of a correct model part by more at layer 24 than at layer 4.
The half-precision checks (`attnscope.inspector.checks`) must tell that accumulation from a bug;
the 4-layer `tiny-code` cannot show it, so the tests and the benchmark use this model.

The weights are random, drawn so that attention is far from uniform (not trained: a deep model
trained on a CPU takes hours):

- RMSNorm weights 1, tied embeddings N(0, 0.3);
- ``q_proj`` and ``k_proj`` N(0, 1.6 / sqrt(hidden)): q and k entries of standard deviation ~1.6
  on a normalized input, so a score q·k/sqrt(D) has a standard deviation of ~2.5 and each row's
  softmax puts most of its weight on a few keys;
- ``v_proj``, ``gate_proj``, ``up_proj`` N(0, 1 / sqrt(fan_in)); the residual outputs ``o_proj`` and
  ``down_proj`` N(0, 1 / sqrt(fan_in)) / sqrt(2 L) (GPT-2's scaling), so the residual stream stays
  of the same size over depth.

The tokenizer is tiny-code's (vocabulary 1024), so prompts are text. The weights are stored in
bfloat16, which float16 and float32 hold exactly at these magnitudes: the model is the same network
in every dtype it is run in. The draw is a function of the seed alone (`torch.manual_seed`, CPU).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from attnscope.model import Transformer
from attnscope.sample_models.training import dtype_name, llama_config, save_model

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "deep-random"
TOKENIZER_FROM = HERE / "tiny-code"

SIZES = dict(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=24,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
    bos_token_id=0,
    eos_token_id=0,
)
QK_STD = 1.6  # q and k entries' standard deviation on a normalized input
EMBED_STD = 0.3
STORED = torch.bfloat16


def draw(model: Transformer, seed: int) -> None:
    """The weights described in the module docstring, in `named_parameters` order."""
    torch.manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name == "embed_tokens.weight":
                p.normal_(0.0, EMBED_STD)
            else:
                fan_in = p.shape[1]
                std = QK_STD if name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
                std /= math.sqrt(fan_in)
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * n_layers)
                p.normal_(0.0, std)


CARD = """# deep-random

A 24-layer Llama with grouped-query attention and random weights, for the half-precision checks:
deep enough that rounding accumulates over its layers.

Not trained: its continuations are noise. What matters is that its attention is far from uniform
(q and k are drawn large: scores have a standard deviation of about 2.5) and that it has as many
layers as real small models (SmolLM-135M has 30), so that float16 and bfloat16 runs show how far a
correct model's full forward and token-by-token pass drift apart over depth.
`sample_models/make_deep_random.py` draws it (seed {seed}) and says how.

| | |
|---|---|
| architecture | `LlamaForCausalLM` (`model_type` llama) |
| layers | {layers} |
| hidden size / MLP inner size | {hidden} / {inter} |
| attention heads (query / key-value) | {heads} / {kv} (grouped-query attention), head dim {head_dim} |
| vocab size | {vocab} (tiny-code's tokenizer) |
| positions | RoPE, theta 10000, max_position_embeddings {positions} |
| weights | `model.safetensors`, {stored} (exact in float16 and float32 too) |
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = llama_config(**SIZES)
    model = Transformer(config).eval()
    draw(model, args.seed)
    tok = Tokenizer.from_file(str(TOKENIZER_FROM / "tokenizer.json"))
    tokenizer_config = json.loads((TOKENIZER_FROM / "tokenizer_config.json").read_text())
    save_model(
        model,
        tok,
        args.out,
        dtype=STORED,
        generation={"bos_token_id": 0, "eos_token_id": 0},
        tokenizer_config=tokenizer_config,
    )
    (args.out / "README.md").write_text(
        CARD.format(
            seed=args.seed,
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            inter=config.intermediate_size,
            heads=config.num_attention_heads,
            kv=config.num_key_value_heads,
            head_dim=config.head_dim,
            vocab=config.vocab_size,
            positions=config.max_position_embeddings,
            stored=dtype_name(STORED),
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
