"""GGUF files: written here with the `gguf` package's writer (sample_models/make_gguf.py, as llama.cpp's
converter writes them) from tiny-code, a random Hugging Face Qwen3 and a random Llama with a
SentencePiece vocabulary, in every supported tensor type, then

(a) attnscope's logits on the file equal Hugging Face transformers' own GGUF loading of the same
    file (``from_pretrained(dir, gguf_file=...)``, which dequantizes with the same `gguf.quants`)
    within 1e-4, and both tokenize alike (but for a SentencePiece vocabulary on a leading space,
    where attnscope follows llama.cpp: tests/test_gguf_tokenizers.py);
(b) F32 and F16 files reproduce the model they were written from (llama3 and linear rope scaling,
    attention and MLP biases, tied embeddings, a Mistral sliding window);

and bad files (truncated, not GGUF, an unknown architecture or tensor type, no gguf package) are one
line and exit code 2. Everything is generated into tmp_path.
"""

from __future__ import annotations

import inspect
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from support import gguf_files
from support.gguf_files import finish
from support.models import build_hf_model
from test_cli import assert_user_error, invoke

import attnscope
from attnscope.errors import ConfigError, LoadError
from attnscope.model import gguf as gguf_loader
from attnscope.model.loader import sample_models
from attnscope.sample_models import make_gguf
from attnscope.sample_models.make_gguf import Vocab, bpe_vocab, quantize, write_gguf

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("single_thread")

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "  two leading spaces",
    "tabs\tand  gaps",
    "unicode: é ü 🙂 ∑",
    "<|endoftext|> in the text",
    "12345 numbers 3.14",
]
PROMPT = TEXTS[0]


def hf_dir(model, path: Path, tokenizer_from: Path | None = None) -> Path:
    """`model` (a transformers model) saved at `path`, with tokenizer files copied from `tokenizer_from`."""
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if tokenizer_from is not None:
            shutil.copy(tokenizer_from / name, path / name)
    return path


def spm_vocab() -> Vocab:
    """A SentencePiece-style vocabulary (``tokenizer.ggml.model`` llama): <unk>, <s>, </s>, the 256 byte
    tokens, and pieces with ▁ learned from the source of `textwrap`, scored by merge order."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator([inspect.getsource(textwrap)], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    pieces = [p for p, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return Vocab("llama", tokens, types, scores=scores, bos_token_id=1, eos_token_id=2, unknown_token_id=0)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_code) -> dict[str, tuple[Path, Vocab | None]]:
    """The models the files are written from: HF directories, and the vocabulary to write (None: the
    directory's byte-level BPE)."""
    root = tmp_path_factory.mktemp("gguf-sources")
    vocab = spm_vocab()
    out = {
        # Qwen3 with head_dim 128 (transformers' GGUF loader reads no head_dim for qwen3 and takes its default)
        "qwen3": (
            hf_dir(
                build_hf_model("qwen3", seed=3, vocab_size=1024, hidden_size=256, intermediate_size=512, head_dim=128),
                root / "qwen3",
                tiny_code,
            ),
            None,
        ),
        "llama-spm": (
            hf_dir(build_hf_model("llama-gqa", seed=4, vocab_size=len(vocab.tokens)), root / "llama-spm"),
            vocab,
        ),
        "tiny-code": (tiny_code, None),
    }
    return out


def write(sources, name: str, kind, path: Path) -> Path:
    src, vocab = sources[name]
    if vocab is None and name == "qwen3":
        vocab = bpe_vocab(src, pre="qwen2")
    return write_gguf(src, path / f"{name}-{kind if isinstance(kind, str) else 'mixed'}.gguf", kind, vocab=vocab)


def hf_gguf(file: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    return model.eval(), tokenizer


# ---- the writer's blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_quantized_blocks_read_back_within_their_step(kind):
    """The blocks written for the tests are valid: `gguf.quants.dequantize` reads them back within one
    quantization step of the values (the k-quants are made by make_gguf.py, the rest by gguf.quants)."""
    x = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    back = gguf.quants.dequantize(quantize(x, kind), gguf.GGMLQuantizationType[kind])
    levels = {
        "F32": 0,
        "F16": 2**11,
        "BF16": 2**8,
        "Q8_0": 127,
        "Q4_0": 7,
        "Q4_1": 15,
        "Q5_0": 15,
        "Q5_1": 31,
        "Q4_K": 15,
        "Q5_K": 31,
        "Q6_K": 31,
    }[kind]
    bound = 0.0 if levels == 0 else 2 * float(np.abs(x).max()) / levels
    assert back.shape == x.shape
    assert float(np.abs(back - x).max()) <= bound


# ---- (a) attnscope == transformers on the same file ----------------------------------------------------

PARITY = [
    ("tiny-code", "Q8_0"),
    ("tiny-code", "Q4_K"),
    ("tiny-code", "Q6_K"),
    ("tiny-code", "Q4_0"),
    ("qwen3", "F16"),
    ("qwen3", "BF16"),
    ("qwen3", "Q4_1"),
    ("qwen3", "Q5_0"),
    ("qwen3", "Q5_1"),
    ("qwen3", "Q5_K"),
    ("llama-spm", "Q8_0"),
    ("llama-spm", "Q4_K"),
]


@pytest.mark.parametrize(("name", "kind"), PARITY, ids=[f"{n}-{k}" for n, k in PARITY])
def test_logits_and_tokens_match_transformers_gguf_loading(sources, name, kind, tmp_path):
    file = write(sources, name, kind, tmp_path)
    ours = attnscope.load_model(file)
    hf_model, hf_tokenizer = hf_gguf(file)
    for text in TEXTS:
        if name == "llama-spm" and text.startswith(" "):
            continue  # llama.cpp puts its ▁ before a leading space too, transformers does not
        assert ours.tokenizer.encode(text) == hf_tokenizer(text)["input_ids"], text
    ids = ours.tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0]
    for backend in ("eager", "sdpa"):
        result = attnscope.Scope(ours, backend=backend).run(ids)
        torch.testing.assert_close(result.logits, expected, atol=1e-4, rtol=0)


def test_the_llama_q_k_permutation_is_undone(sources, tmp_path, monkeypatch, tiny_code):
    """The rows of q and k come back in Hugging Face's order; left in llama.cpp's the logits are far off
    (the parity above rests on it)."""
    file = write(sources, "tiny-code", "F32", tmp_path)
    original = attnscope.Scope(attnscope.load_model(tiny_code)).run(PROMPT).logits
    torch.testing.assert_close(attnscope.Scope(attnscope.load_model(file)).run(PROMPT).logits, original, atol=0, rtol=0)
    init = gguf_loader.GGUFTensors.__init__

    def unpermuted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.permuted = False

    monkeypatch.setattr(gguf_loader.GGUFTensors, "__init__", unpermuted)
    wrong = attnscope.Scope(attnscope.load_model(file)).run(PROMPT).logits
    assert float((wrong - original).abs().max()) > 1.0


# ---- (b) F32 / F16 files reproduce the model they came from ----------------------------------------------


@pytest.mark.parametrize("kind", ["F32", "F16"])
def test_float_files_reproduce_tiny_code(sources, kind, tmp_path, tiny_code):
    """tiny-code's weights are float16: both files hold exactly its weights, so the logits are equal."""
    file = write(sources, "tiny-code", kind, tmp_path)
    model = attnscope.load_model(file)
    assert model.name == f"tiny-code-{kind}" and model.config.tie_word_embeddings
    original = attnscope.Scope(attnscope.load_model(tiny_code)).run(PROMPT)
    result = attnscope.Scope(model).run(PROMPT)
    assert result.ids == original.ids
    torch.testing.assert_close(result.logits, original.logits, atol=0, rtol=0)


@pytest.mark.parametrize("spec", ["qwen3", "llama-llama3-rope", "llama-linear-bias-tied", "mistral-sliding"])
def test_f32_files_reproduce_the_safetensors_model(spec, tmp_path):
    """The config from the metadata and the tensors by llama.cpp's names give back the model: llama3 rope
    scaling (the rope_freqs tensor), linear scaling, q/k/v/o and MLP biases (the bias rows permuted like
    the weights), tied embeddings, Qwen3's q/k norms, Mistral's sliding window."""
    src = hf_dir(build_hf_model(spec, seed=5), tmp_path / spec)
    vocab = Vocab("gpt2", [f"t{i}" for i in range(100)], [1] * 100, pre="gpt-2")
    file = write_gguf(src, tmp_path / f"{spec}.gguf", "F32", vocab=vocab, name=spec)
    original, loaded = attnscope.load_model(src), attnscope.load_model(file)
    assert loaded.config.model_type == original.config.model_type
    assert [repr(m) for m in loaded.layer_masks()] == [repr(m) for m in original.layer_masks()]
    ids = torch.randint(0, 100, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(
        attnscope.Scope(loaded).run(ids).logits, attnscope.Scope(original).run(ids).logits, atol=1e-5, rtol=0
    )


def test_dtype_and_quantized_bands(sources, tmp_path, monkeypatch):
    """Tensors are dequantized a band of rows at a time, straight into the model's dtype: with bands of
    512 values no call of gguf.quants.dequantize sees more, and the model is the same as with one band."""
    file = write(sources, "qwen3", "Q4_K", tmp_path)
    whole = attnscope.load_model(file, dtype="float16")
    sizes = []
    real = gguf.quants.dequantize

    def spy(data, qtype):
        out = real(data, qtype)
        sizes.append(out.size)
        return out

    monkeypatch.setattr(gguf.quants, "dequantize", spy)
    monkeypatch.setattr(gguf_loader, "CHUNK_ELEMENTS", 512)
    banded = attnscope.load_model(file, dtype="float16")
    assert sizes and max(sizes) <= 512
    assert banded.dtype == torch.float16
    for (name, a), (_, b) in zip(whole.net.state_dict().items(), banded.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_mistral_files_are_written_as_llama(sources, tmp_path):
    src, vocab = sources["llama-spm"]
    file = write_gguf(src, tmp_path / "m.gguf", "F32", vocab=vocab, name="Mistral-7B-v0.1-tiny")
    model = attnscope.load_model(file)
    assert model.config.model_type == "mistral" and model.config.sliding_window is None
    assert gguf.GGUFReader(file).fields["general.architecture"].contents() == "llama"


# ---- resolving paths ---------------------------------------------------------------------------------------


def test_a_directory_with_one_gguf_file_and_a_bare_blob_load(sources, tmp_path):
    file = write(sources, "llama-spm", "Q8_0", tmp_path)
    blob = tmp_path / "blobs" / "sha256-0123"
    blob.parent.mkdir()
    shutil.copy(file, blob)
    assert attnscope.load_model(tmp_path).path == file  # the directory holds one GGUF file, no config.json
    assert attnscope.load_model(blob).config.num_hidden_layers == 2  # Ollama's blobs have no extension
    shutil.copy(file, tmp_path / "second.gguf")
    with pytest.raises(LoadError, match="2 GGUF files: name one of them"):
        attnscope.load_model(tmp_path)


def test_the_sample_is_registered():
    assert "tiny-code-q4" in sample_models()
    model = attnscope.load_model("tiny-code-q4")
    assert model.name == "tiny-code-q4" and model.path.suffix == ".gguf"
    reader = gguf.GGUFReader(model.path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["token_embd.weight"] == "Q6_K" and kinds["blk.0.attn_q.weight"] == "Q4_K"


# ---- bad files: one line, exit code 2 ------------------------------------------------------------------------


def raw_tensor_file(
    path: Path, arch: str = "llama", kind: str = "Q2_K", heads: int = 4, kv_heads: int = 2, scaling: str | None = None
) -> Path:
    """A small GGUF file of architecture `arch` (hidden 64, `heads` / `kv_heads` heads, rope scaling of type
    `scaling`) with one 256-value tensor of type `kind` (random bytes)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    if scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType(scaling))
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    data = np.random.default_rng(0).integers(0, 255, (1, 256 // block * size), dtype=np.uint8)
    writer.add_tensor("token_embd.weight", data, raw_dtype=gguf.GGMLQuantizationType[kind])
    return finish(writer, path)


@pytest.fixture(scope="module")
def bad_files(sources, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one-line error must say)."""
    root = tmp_path_factory.mktemp("bad-gguf")
    good = write(sources, "llama-spm", "Q8_0", root).read_bytes()
    files = {}

    def add(name, data: bytes, expected: str):
        (root / f"{name}.gguf").write_bytes(data)
        files[name] = (root / f"{name}.gguf", expected)

    add("truncated-data", good[: len(good) // 2], "truncated")
    add("truncated-header", good[:100], "truncated")
    add("not-gguf", b"PK\x03\x04 a zip file" * 10, "not a GGUF file")
    add("empty", b"", "not a GGUF file")
    files["unknown-arch"] = (  # neither engine reads rwkv6 (tests/test_gguf_hf.py: what transformers reads)
        raw_tensor_file(root / "rwkv6.gguf", arch="rwkv6"),
        "unsupported GGUF architecture 'rwkv6' (the native engine reads llama, qwen2, qwen3; ",
    )
    files["uneven-heads"] = (
        raw_tensor_file(root / "heads.gguf", heads=4, kv_heads=3),
        "llama.attention.head_count (4) is not divisible by llama.attention.head_count_kv (3)",
    )
    files["yarn"] = (raw_tensor_file(root / "yarn.gguf", scaling="yarn"), "unsupported llama.rope.scaling.type 'yarn'")
    files["wrong-shape"] = (
        raw_tensor_file(root / "shape.gguf", kind="F32"),
        "shape.gguf: tensor 'token_embd.weight' has shape (1, 256), the config needs (1, 64)",
    )
    real = make_gguf.quantize

    def with_q2_k(data, kind):  # gguf.quants cannot make Q2_K blocks: random bytes are blocks enough
        if kind != "Q2_K":
            return real(data, kind)
        return np.random.default_rng(0).integers(0, 255, (data.shape[0], data.shape[1] // 256 * 84), dtype=np.uint8)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(make_gguf, "quantize", with_q2_k)
        model = write_gguf(
            sources["qwen3"][0],
            root / "q2k.gguf",
            lambda name, shape: "Q2_K" if name == "blk.0.ffn_down.weight" else "F32",
            vocab=bpe_vocab(sources["qwen3"][0], pre="qwen2"),
        )
    files["unsupported-type"] = (
        model,
        "tensor 'blk.0.ffn_down.weight' has type Q2_K, which attnscope cannot "
        "dequantize (supported: F32, F16, BF16, Q8_0",
    )
    return files


BAD = [
    "truncated-data",
    "truncated-header",
    "not-gguf",
    "empty",
    "unknown-arch",
    "unsupported-type",
    "uneven-heads",
    "yarn",
    "wrong-shape",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_files_are_one_line_errors(bad_files, name):
    file, expected = bad_files[name]
    with pytest.raises((LoadError, ConfigError)) as info:
        attnscope.load_model(file)
    assert expected in str(info.value) and file.name in str(info.value)


def test_bad_files_exit_2_with_one_line_on_every_command(bad_files, tmp_path, tiny_code):
    """Through the CLI: exit code 2, one line on stderr, no traceback, no output file."""
    out = tmp_path / "report.json"
    for name in ("truncated-data", "unsupported-type"):
        file, expected = bad_files[name]
        for args in (
            ["run", "-p", "def f(x):", "--json", str(out)],
            ["check", "-p", "x"],
            ["heads"],
            ["compare", "-m", str(tiny_code), "-p", "x", "--json", str(out)],
        ):
            assert_user_error(invoke(*args, "-m", str(file)), expected)
        assert not out.exists()


def test_without_the_gguf_package_the_error_names_the_extra(sources, tmp_path):
    file = write(sources, "llama-spm", "Q8_0", tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import sys
sys.modules["gguf"] = None
from attnscope.cli import main
sys.argv = ["attnscope", "run", "-m", {str(file)!r}, "-p", "x"]
main()
""",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "attnscope: error: reading GGUF files needs the gguf package: pip install "
        '"attnscope[gguf]"'
    )


# ---- bad metadata: refused from the header, before the tokenizers library or any allocation --------------

S, A = gguf_files.STRING, gguf_files.ARRAY
I32, U64, F32 = gguf_files.INT32, gguf_files.UINT64, gguf_files.FLOAT32


def _tokens(tokens, kind=S):
    return {"tokenizer.ggml.tokens": (A, tokens, kind), "tokenizer.ggml.token_type": (A, [1] * len(tokens), I32)}


def _spm(**extra):
    """A llama (SentencePiece) vocabulary of four tokens, scores as given."""
    return {
        "tokenizer.ggml.model": (S, "llama"),
        "tokenizer.ggml.merges": None,
        "tokenizer.ggml.pre": None,
        **_tokens(["<unk>", "<s>", "a", "b"]),
        **extra,
    }


# name -> (metadata edits: key -> (type, value, ...) or None to drop it, what the one line says)
BAD_METADATA = {
    "integer-tokens": (_tokens([1, 2, 3, 4, 5, 6], I32), "tokenizer.ggml.tokens[0] is 1, not a string"),
    "merge-of-a-missing-token": (
        {"tokenizer.ggml.merges": (A, ["a b", "ab z"], S)},
        "tokenizer.ggml.merges[1] 'ab z' names 'z', which is not a token",
    ),
    "merge-into-a-missing-token": (
        {"tokenizer.ggml.merges": (A, ["b c"], S)},
        "tokenizer.ggml.merges[0] 'b c' names 'bc', which is not a token",
    ),
    "integer-merges": ({"tokenizer.ggml.merges": (A, [7, 8], I32)}, "tokenizer.ggml.merges[0] is 7, not a string"),
    "pre-as-an-array": ({"tokenizer.ggml.pre": (A, ["gpt-2"], S)}, "unsupported tokenizer.ggml.pre ['gpt-2']"),
    "duplicate-tokens": (_tokens(["a", "b", "ab", "<s>", "a", "abc"]), "holds 'a' twice (ids 0 and 4)"),
    "string-scores": (
        _spm(**{"tokenizer.ggml.scores": (A, ["0", "0", "-1", "-2"], S)}),
        "tokenizer.ggml.scores[0] is '0', not a number",
    ),
    "scores-not-one-per-token": (
        _spm(**{"tokenizer.ggml.scores": (A, [0.0, 0.0], F32)}),
        "tokenizer.ggml.scores has 2 entries for 4 tokens",
    ),
    "token-types-as-strings": (
        {"tokenizer.ggml.token_type": (A, ["1"] * 6, S)},
        "tokenizer.ggml.token_type[0] is '1', not an integer",
    ),
    "add-bos-as-a-string": ({"tokenizer.ggml.add_bos_token": (S, "yes")}, "add_bos_token must be a boolean"),
    # sizes: a count the file cannot hold is refused before anything is allocated
    "array-of-2^40-integers": (
        {"general.huge": (A, [1, 2, 3], I32, 1 << 40)},
        "truncated (its",
    ),
    "array-of-2^40-strings": ({"tokenizer.ggml.tokens": (A, gguf_files.TOKENS, S, 1 << 40)}, "truncated (its"),
    "string-of-2^60-bytes": ({"general.name": (S, b"x")}, "truncated (its"),
    "more-tokens-than-the-vocabulary": (
        {"llama.vocab_size": (gguf_files.UINT32, 4)},
        "tokenizer.ggml.tokens holds 6 tokens but the model's vocab_size is 4",
    ),
    "nested-array": ({"general.nested": (A, [], A)}, "arrays of value type 9 are not supported"),
    "unknown-value-type": ({"general.odd": (13, 0)}, "unknown value type 13"),
    "key-length-naming-the-metadata": (
        {"llama.attention.key_length": (gguf_files.UINT32, 0)},
        "llama.attention.key_length",
    ),
}


def bad_metadata_file(path: Path, name: str) -> Path:
    metadata = gguf_files.tiny_metadata()
    for key, value in BAD_METADATA[name][0].items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    data = gguf_files.gguf_bytes(metadata)
    if name == "string-of-2^60-bytes":  # the length of general.name's value, claimed 2^60
        at = data.index(b"general.name") + len("general.name") + 4
        data = data[:at] + struct.pack("<Q", 1 << 60) + data[at + 8 :]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_bad_metadata_is_one_line_and_exit_2(name, tmp_path):
    file = bad_metadata_file(tmp_path / f"{name}.gguf", name)
    assert_user_error(invoke("run", "-m", str(file), "-p", "ab", "-n", "0", "--checks", "none"), BAD_METADATA[name][1])
    assert "config.json" not in invoke("run", "-m", str(file), "-p", "ab").stderr


def test_the_tiny_file_of_the_bad_metadata_table_runs(tmp_path):
    file = tmp_path / "tiny.gguf"
    file.write_bytes(gguf_files.gguf_bytes())
    result = invoke("run", "-m", str(file), "-p", "abc ab", "-n", "0", "--checks", "none")
    assert result.exit_code == 0, result.output


def test_metadata_nobody_reads_is_stepped_over_not_read(tmp_path):
    """200k strings (~2 MB) under a key nobody reads, and a long chat template: the file loads, and none
    of it becomes a Python object."""
    metadata = gguf_files.tiny_metadata()
    metadata["general.unread"] = (A, [f"s{i}" for i in range(200_000)], S)
    metadata["tokenizer.chat_template"] = (S, "{{ x }}" * 100_000)
    file = tmp_path / "big-metadata.gguf"
    file.write_bytes(gguf_files.gguf_bytes(metadata))
    read = gguf_loader.GGUFFile(file)
    assert read.metadata.count("general.unread") == 200_000
    attnscope.load_model(file)
    assert "general.unread" not in read.metadata._read and "tokenizer.chat_template" not in read.metadata._read


def test_a_huge_claimed_array_is_refused_in_bounded_time_and_memory(tmp_path):
    """2^40 entries claimed in a small file: refused from the header in a subprocess, quickly."""
    file = bad_metadata_file(tmp_path / "huge.gguf", "array-of-2^40-strings")
    code = (
        f"import attnscope, resource\ntry: attnscope.load_model({str(file)!r})\n"
        "except Exception as e: print(type(e).__name__)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    kind, peak_kib = proc.stdout.split()
    assert kind == "LoadError" and int(peak_kib) < 1 << 20, proc.stdout  # under 1 GiB


@pytest.mark.parametrize("kind", ["fifo", "fifo.gguf", "link-to-dev-zero"])
def test_nodes_that_are_no_file_are_refused_without_opening_them(kind, tmp_path):
    node = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(node)
    else:
        node.symlink_to("/dev/zero")
    proc = subprocess.run(
        [sys.executable, "-m", "attnscope", "run", "-m", str(node), "-p", "x"],
        capture_output=True,
        text=True,
        timeout=60,  # opening a FIFO would wait for a writer: a regression fails here, it does not hang
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not a regular file" in proc.stderr and "config.json" not in proc.stderr
