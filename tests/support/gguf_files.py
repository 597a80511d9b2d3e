"""Writing the GGUF files the tests build, with the `gguf` package's writer as llama.cpp's scripts do."""

from __future__ import annotations

from pathlib import Path


def finish(writer, path: Path) -> Path:
    """Write what `writer` (a `gguf.GGUFWriter` for `path`) holds, header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- GGUF bytes written by hand: any metadata, well-formed or not ------------------------------------

UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64 = 4, 5, 6, 7, 8, 9, 10  # gguf.GGUFValueType
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
HIDDEN, INNER, HEADS, KV_HEADS, LAYERS = 64, 128, 4, 2, 1
TOKENS = ["a", "b", "ab", "<s>", "c", "abc"]


def _string(text: str | bytes) -> bytes:
    import struct

    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def encode_value(kind: int, value, item: int | None = None, count: int | None = None) -> bytes:
    """One metadata value as GGUF writes it: `kind` a gguf.GGUFValueType; an array of `item`s (its
    `count` as given, which may claim more than `value` holds)."""
    import struct

    if kind == STRING:
        return _string(value)
    if kind != ARRAY:
        return struct.pack(_FORMATS.get(kind, "<I"), value)  # an unknown type: four bytes
    assert item is not None
    body = b"".join(encode_value(item, v) for v in value)
    return struct.pack("<IQ", item, len(value) if count is None else count) + body


def tiny_metadata() -> dict[str, tuple]:
    """The metadata of `gguf_bytes`'s default model: a one-layer llama with a six-token byte-level BPE."""
    arch = "llama"
    return {
        "general.architecture": (STRING, arch),
        f"{arch}.block_count": (UINT32, LAYERS),
        f"{arch}.context_length": (UINT32, 64),
        f"{arch}.embedding_length": (UINT32, HIDDEN),
        f"{arch}.feed_forward_length": (UINT32, INNER),
        f"{arch}.attention.head_count": (UINT32, HEADS),
        f"{arch}.attention.head_count_kv": (UINT32, KV_HEADS),
        f"{arch}.attention.layer_norm_rms_epsilon": (FLOAT32, 1e-5),
        f"{arch}.rope.freq_base": (FLOAT32, 10000.0),
        "tokenizer.ggml.model": (STRING, "gpt2"),
        "tokenizer.ggml.pre": (STRING, "gpt-2"),
        "tokenizer.ggml.tokens": (ARRAY, TOKENS, STRING),
        "tokenizer.ggml.token_type": (ARRAY, [1, 1, 1, 3, 1, 1], INT32),
        "tokenizer.ggml.merges": (ARRAY, ["a b", "ab c"], STRING),
        "tokenizer.ggml.bos_token_id": (UINT32, 3),
    }


def tiny_tensors() -> dict[str, tuple[int, ...]]:
    """The F32 tensors of the default model (torch shapes)."""
    shapes = {"token_embd.weight": (len(TOKENS), HIDDEN), "output_norm.weight": (HIDDEN,)}
    dim = HIDDEN // HEADS
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HEADS * dim, HIDDEN),
            f"blk.{i}.attn_k.weight": (KV_HEADS * dim, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * dim, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * dim),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (INNER, HIDDEN),
            f"blk.{i}.ffn_up.weight": (INNER, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, INNER),
        }
    return shapes


def gguf_bytes(metadata: dict[str, tuple] | None = None, tensors: dict[str, tuple[int, ...]] | None = None) -> bytes:
    """A GGUF v3 file: `metadata` (key -> (type, value[, element type[, claimed count]])), by default
    `tiny_metadata`, and F32 `tensors` of small random values (name -> torch shape), by default `tiny_tensors`."""
    import struct

    import numpy as np

    metadata = tiny_metadata() if metadata is None else metadata
    tensors = tiny_tensors() if tensors is None else tensors
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, (kind, value, *array) in metadata.items():
        out += [_string(key), struct.pack("<I", kind), encode_value(kind, value, *array)]
    rng = np.random.default_rng(0)
    data, offset = [], 0
    for name, shape in tensors.items():
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32).tobytes()
        out += [_string(name), struct.pack("<I", len(shape)), *(struct.pack("<Q", d) for d in reversed(shape))]
        out.append(struct.pack("<IQ", 0, offset))  # F32
        padded = values + b"\0" * (-len(values) % 32)
        data.append(padded)
        offset += len(padded)
    header = b"".join(out)
    return header + b"\0" * (-len(header) % 32) + b"".join(data)
