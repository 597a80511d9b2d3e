"""Write a Hugging Face model directory as a GGUF file, the way llama.cpp's ``convert_hf_to_gguf.py``
does, and make the quantized sample ``tiny-code-q4`` from ``tiny-code``.

    python sample_models/make_gguf.py       # reads sample_models/tiny-code, writes sample_models/tiny-code-q4/

`write_gguf` writes llama.cpp's metadata keys and tensor names (from the `gguf` package's own
tables), permutes the rows of q_proj and k_proj for the llama architecture as the converter does
(llama.cpp's llama kernels rotate interleaved pairs, Hugging Face's rotate halves), writes llama3
rope scaling as the ``rope_freqs`` tensor, and stores every matrix in the requested type (vectors —
norms, biases — stay F32, as llama.cpp keeps them). The vocabulary is the model's byte-level BPE
from ``tokenizer.json``, or any `Vocab` given.

`gguf.quants` quantizes F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1; it only dequantizes the k-quants,
so Q4_K, Q5_K and Q6_K blocks are made here (`quantize`): per sub-block the scale (and minimum) of
its range, rounded to the nearest level, packed in the block layout that `gguf.quants` reads back.
That is the simple form of llama.cpp's quantizer (which also searches for the scale that minimizes
the error), so the files are valid and their error is of the same order, not bit-identical.

The sample is tiny-code with every matrix in Q4_K and the embedding in Q6_K, the mix of llama.cpp's
Q4_K_M for a tied embedding. The script loads it back and checks that it tokenizes as tiny-code does
and that its logits stay close to tiny-code's.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE / "tiny-code"
DEFAULT_OUT = HERE / "tiny-code-q4"
SAMPLE_FILE = "tiny-code-q4.gguf"

ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
QK_K = 256  # elements per k-quant super-block


@dataclass
class Vocab:
    """The ``tokenizer.ggml.*`` metadata of a GGUF file."""

    model: str  # "gpt2" (byte-level BPE with merges) or "llama" (SentencePiece vocabulary with scores)
    tokens: list[str]
    token_types: list[int]  # gguf.TokenType: 1 normal, 2 unknown, 3 control, 6 byte
    pre: str | None = None  # the pre-tokenizer's name, e.g. "gpt-2", "qwen2", "llama-bpe"
    merges: list[str] = field(default_factory=list)  # "a b" pairs, in merge order
    scores: list[float] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    unknown_token_id: int | None = None
    add_bos_token: bool | None = None
    add_space_prefix: bool | None = None


def bpe_vocab(model_dir: Path, pre: str = "gpt-2") -> Vocab:
    """The byte-level BPE of a model directory's ``tokenizer.json`` (and ``tokenizer_config.json``)."""
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    if tok["model"]["type"] != "BPE":
        raise ValueError(f"{model_dir}: expected a BPE tokenizer.json, got {tok['model']['type']}")
    vocab = dict(tok["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    types = [3 if text in special else 1 for text in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    config = json.loads((model_dir / "config.json").read_text())
    bos = special.get(cfg.get("bos_token"), config.get("bos_token_id"))
    eos = special.get(cfg.get("eos_token"), config.get("eos_token_id"))
    return Vocab(
        "gpt2",
        tokens,
        types,
        pre=pre,
        merges=merges,
        bos_token_id=bos,
        eos_token_id=eos,
        add_bos_token=cfg.get("add_bos_token"),
    )


# ---- k-quant blocks ------------------------------------------------------------------------------


def _levels(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `x` [n, 32]: (scale, offset, q in 0..top) with x ≈ scale * q - offset; offset >= 0."""
    low = np.minimum(x.min(-1), 0.0)
    scale = (x.max(-1) - low) / top
    q = np.where(scale[:, None] > 0, np.rint((x - low[:, None]) / np.where(scale > 0, scale, 1)[:, None]), 0)
    return scale, -low, np.clip(q, 0, top).astype(np.uint8)


def _pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12 bytes holding eight 6-bit scales and eight 6-bit minimums of a Q4_K/Q5_K block."""
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return out


def _k_blocks(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, ...]:
    """The common part of Q4_K and Q5_K: d, dmin (f16 bytes), packed scales, q per element [n, 256]."""
    n = blocks.shape[0]
    top = (1 << bits) - 1
    scale, offset, _ = _levels(blocks.reshape(n * 8, 32), top)
    scale, offset = scale.reshape(n, 8), offset.reshape(n, 8)
    d = (scale.max(-1) / 63).astype(np.float16)
    dmin = (offset.max(-1) / 63).astype(np.float16)
    df, dminf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(np.divide(offset, dminf, out=np.zeros_like(offset), where=dminf > 0)), 0, 63).astype(np.uint8)
    step = (df * sc).reshape(n, 8, 1)
    shift = (dminf * m).reshape(n, 8, 1)
    x = blocks.reshape(n, 8, 32)
    q = np.rint(np.divide(x + shift, step, out=np.zeros_like(x), where=step > 0))
    q = np.clip(q, 0, top).astype(np.uint8)  # (n, 8, 32)
    return d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), _pack_scales(sc, m), q


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _k_blocks(blocks, 4)
    n = q.shape[0]
    pairs = q.reshape(n, 4, 2, 32)  # sub-blocks 2g (low nibble) and 2g + 1 (high nibble) share 32 bytes
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([d, dmin, scales, qs], axis=1)


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _k_blocks(blocks, 5)
    n = q.shape[0]
    low = (q & 15).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 8, 32)  # bit i of byte l: the fifth bit of element l of sub-block i
    qh = np.zeros((n, 32), dtype=np.uint8)
    for i in range(8):
        qh |= high[:, i] << i
    return np.concatenate([d, dmin, scales, qh, qs], axis=1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    amax = np.abs(x).max(-1)  # (n, 16)
    scale = amax / 31  # q in -31..31
    d = (np.abs(scale).max(-1) / 127).astype(np.float16)  # (n,)
    df = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), -128, 127).astype(np.int8)
    step = (df * sc).reshape(n, 16, 1)
    q = np.clip(np.rint(np.divide(x, step, out=np.zeros_like(x), where=step != 0)), -32, 31)
    q = (q + 32).astype(np.uint8).reshape(n, 2, 128)  # two halves of 128 elements
    low = (q & 15).reshape(n, 2, 2, 64)  # elements h*128 + s*64 + l: nibble s of byte h*64 + l
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 2, 4, 32)  # elements h*128 + t*32 + l: bits 2t of byte h*32 + l
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(n, 2)], axis=1)


_K_QUANTS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def quantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """`data` (float32, rows a multiple of the type's block) as the bytes of GGML type `qtype`."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype not in _K_QUANTS:
        return gguf.quants.quantize(data.astype(np.float32), kind)
    if data.shape[-1] % QK_K:
        raise ValueError(f"{qtype} needs rows of a multiple of {QK_K} values, got {data.shape}")
    blocks = _K_QUANTS[qtype](data.astype(np.float32).reshape(-1, QK_K))
    return blocks.reshape(*data.shape[:-1], -1)


# ---- the file --------------------------------------------------------------------------------------


def permute_rope_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rows of each head from HF's half-split rotary order to the
    interleaved pairs of llama.cpp's llama architecture."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama3_rope_factors(config: dict, head_dim: int) -> np.ndarray | None:
    """The ``rope_freqs`` tensor llama.cpp writes for llama3 rope scaling (None for other kinds)."""
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    if rope.get("rope_type") != "llama3":
        return None
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def default_types(qtype: str) -> Callable[[str, tuple[int, ...]], str]:
    """Every matrix whose rows fit the type's blocks in `qtype`, everything else in F32."""
    import gguf

    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]

    def pick(name: str, shape: tuple[int, ...]) -> str:
        return qtype if len(shape) == 2 and shape[-1] % block == 0 else "F32"

    return pick


# general.file_type of a file whose matrices are all of one type (gguf.LlamaFileType)
FILE_TYPES = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "Q8_0": "MOSTLY_Q8_0",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "Q5_0": "MOSTLY_Q5_0",
    "Q5_1": "MOSTLY_Q5_1",
    "Q4_K": "MOSTLY_Q4_K_S",
    "Q5_K": "MOSTLY_Q5_K_S",
    "Q6_K": "MOSTLY_Q6_K",
}


def write_gguf(
    model_dir: Path,
    path: Path,
    types: str | Callable[[str, tuple[int, ...]], str] = "F32",
    vocab: Vocab | None = None,
    name: str | None = None,
    file_type: str | None = None,
) -> Path:
    """Write the HF model directory `model_dir` (config.json, model.safetensors) as GGUF `path`.

    Args:
        types: the GGML type of every matrix ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
            "Q5_1", "Q4_K", "Q5_K", "Q6_K"), or a function (gguf name, shape) -> type.
        vocab: the ``tokenizer.ggml.*`` metadata (default: the directory's byte-level BPE).
        name: ``general.name`` (default: the directory's name).
        file_type: ``general.file_type`` as a `gguf.LlamaFileType` name (default: from `types`, GUESSED
            for a function).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    model_type = config["model_type"]
    arch = ARCHITECTURES[model_type]
    pick = default_types(types) if isinstance(types, str) else types
    vocab = vocab or bpe_vocab(model_dir)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or model_dir.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if model_type == "mistral" and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    file_type = file_type or (FILE_TYPES[types] if isinstance(types, str) else "GUESSED")
    writer.add_file_type(gguf.LlamaFileType[file_type])

    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for key, value in (
        ("bos_token_id", vocab.bos_token_id),
        ("eos_token_id", vocab.eos_token_id),
        ("unk_token_id", vocab.unknown_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{key}")(value)
    if vocab.add_bos_token is not None:
        writer.add_add_bos_token(vocab.add_bos_token)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    for hf_key, value in load_file(str(model_dir / "model.safetensors")).items():
        base, _, suffix = hf_key.rpartition(".")
        gguf_name = f"{names.get_name(base)}.{suffix}"
        data = value.astype(np.float32)
        if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            data = permute_rope_rows(data, heads if ".attn_q." in gguf_name else kv_heads)
        kind = pick(gguf_name, data.shape)
        raw = quantize(data, kind)
        writer.add_tensor(gguf_name, raw, raw_dtype=gguf.GGMLQuantizationType[kind])
    factors = llama3_rope_factors(config, head_dim)
    if factors is not None and arch == "llama":
        writer.add_tensor("rope_freqs.weight", factors)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def q4_k_m_types(name: str, shape: tuple[int, ...]) -> str:
    """The sample's mix: matrices in Q4_K, the (tied) embedding in Q6_K, vectors in F32."""
    if len(shape) != 2:
        return "F32"
    return "Q6_K" if name in ("token_embd.weight", "output.weight") else "Q4_K"


PROBE_PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def __init__(self):\n        self.items = []"]


def verify(src: Path, file: Path) -> float:
    """Load the GGUF back through attnscope: the same tokens as `src` and logits within a few units of
    its logits (quantization moves them; a wrong name or permutation would scramble them). Returns the
    largest logit difference on the probe prompts."""
    import torch

    import attnscope

    original, quantized = attnscope.load_model(src), attnscope.load_model(file)
    worst = 0.0
    for prompt in PROBE_PROMPTS:
        ids = original.tokenizer.encode(prompt)
        if quantized.tokenizer.encode(prompt) != ids:
            raise SystemExit(f"{file}: tokenizes {prompt!r} differently from {src}")
        a = attnscope.Scope(original).run(prompt).logits
        b = attnscope.Scope(quantized).run(prompt).logits
        if a.argmax(-1).eq(b.argmax(-1)).float().mean() < 0.5:
            raise SystemExit(f"{file}: its greedy predictions of {prompt!r} mostly differ from {src}'s")
        worst = max(worst, float((a - b).abs().max()))
    if not torch.isfinite(torch.tensor(worst)) or worst > 10:
        raise SystemExit(f"{file}: logits differ from {src}'s by {worst:.3g}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the HF model directory (default: tiny-code)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the directory to write the GGUF file into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    file = write_gguf(args.src, args.out / SAMPLE_FILE, q4_k_m_types, name="tiny-code-q4", file_type="MOSTLY_Q4_K_M")
    worst = verify(args.src, file)
    print(f"wrote {file} ({file.stat().st_size / 1e6:.2f} MB); logits within {worst:.3g} of {args.src.name}'s")


if __name__ == "__main__":
    main()
