"""GGUF files through the hf engine: transformers loads the file (``from_pretrained(dir, gguf_file=...)``,
every tensor dequantized) and its tokenizer, attnscope watches the model as any transformers model.

- a Phi-3 file (an architecture the native engine does not run; fused qkv and gate/up projections),
  written here with the `gguf` package's writer in F32 from a random transformers Phi3 model and
  tiny-code's vocabulary: ``--engine auto`` loads it on the hf engine, ``attnscope check`` passes
  every check, and the logits equal the Phi3 model it was written from within 1e-5;
- the committed sample tiny-code-q4 (a llama file) through ``--engine hf``: transformers' reading of
  the file agrees with the native engine's (measured: identical logits, both dequantize with
  `gguf.quants`; the test allows 1e-5);
- bad files and engines: one line, exit code 2 (an architecture neither engine reads, one
  transformers does not read asked of ``--engine hf``, a tensor type transformers cannot dequantize,
  a tensor or a layer missing, not enough memory, no transformers).

Everything is generated into tmp_path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.gguf_files import finish
from support.samples import sample
from test_cli import assert_user_error, invoke

import attnscope
from attnscope.model import memory
from attnscope.model.tokenizer import Tokenizer
from attnscope.sample_models.make_gguf import Vocab, bpe_vocab

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n"
TEXTS = [PROMPT, "  two leading spaces", "import os\nclass Stack:\n    pass", "12345 numbers 3.14"]
LAYERS = 2


def phi3_model(vocab: Vocab):
    """A random Phi-3 (float32, eval, eager attention): hidden 64, 2 layers, 4 query heads / 2 kv
    heads, q/k/v weights larger than the default init so that attention is far from uniform."""
    config = transformers.Phi3Config(
        vocab_size=len(vocab.tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=vocab.bos_token_id,
        eos_token_id=vocab.eos_token_id,
        pad_token_id=vocab.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2)
            else:
                param.normal_(0.0, 0.3 if "qkv_proj" in name else 0.1)
    return model


def write_phi3_gguf(
    model,
    vocab: Vocab,
    path: Path,
    *,
    arch: str = "phi3",
    block_count: int = LAYERS,
    tensors: Callable[[dict[str, np.ndarray]], dict[str, tuple[np.ndarray, str]]] | None = None,
) -> Path:
    """`model` as llama.cpp's converter writes a Phi-3 (``general.architecture`` `arch`): its metadata
    keys, its tensor names (the `gguf` package's table), every tensor F32, and `vocab` as the
    ``tokenizer.ggml.*`` metadata. `tensors` may change the tensors: {name: array} -> {name: (array or
    raw bytes, GGML type)}."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(path.stem)
    writer.add_block_count(block_count)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre or "default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_token_id)
    writer.add_eos_token_id(vocab.eos_token_id)
    writer.add_pad_token_id(vocab.eos_token_id)
    if vocab.add_bos_token is not None:
        writer.add_add_bos_token(vocab.add_bos_token)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, c.num_hidden_layers)
    arrays = {}
    for key, value in model.state_dict().items():
        base, _, suffix = key.rpartition(".")
        arrays[f"{names.get_name(base)}.{suffix}"] = value.numpy().astype(np.float32)
    typed = tensors(arrays) if tensors is not None else {name: (a, "F32") for name, a in arrays.items()}
    for name, (data, kind) in typed.items():
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[kind])
    return finish(writer, path)


@pytest.fixture(scope="module")
def vocab(tiny_code) -> Vocab:
    return bpe_vocab(tiny_code)


@pytest.fixture(scope="module")
def phi3(vocab, tmp_path_factory):
    """(the transformers Phi3 model, the GGUF file written from it)."""
    model = phi3_model(vocab)
    return model, write_phi3_gguf(model, vocab, tmp_path_factory.mktemp("gguf-hf") / "tiny-phi3.gguf")


# ---- a Phi-3 file: auto picks the hf engine, every check passes, the logits are the model's --------------


def test_auto_loads_a_phi3_file_on_the_hf_engine_with_the_models_logits(phi3, tiny_code):
    reference, file = phi3
    engine = attnscope.load_model(file)
    assert engine.engine == "hf" and engine.layout.model_type == "phi3" and engine.name == "tiny-phi3"
    assert engine.path == file and engine.layout.n_layers == LAYERS and engine.layout.n_kv_heads == 2
    ours = Tokenizer(tiny_code)  # the vocabulary the file was written with
    for text in TEXTS:
        assert engine.tokenizer.encode(text) == ours.encode(text), text
    ids = engine.tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    for backend in ("eager", "sdpa"):
        result = attnscope.Scope(engine, backend=backend).run(ids)
        torch.testing.assert_close(result.logits, expected, atol=1e-5, rtol=0)


def test_check_and_run_pass_on_a_phi3_file(phi3, tmp_path):
    _, file = phi3
    out = tmp_path / "report.json"
    result = invoke("check", "-m", str(file), "-p", PROMPT, "--json", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["engine"] == "hf" and report["model"]["model_type"] == "phi3"
    assert report["passed"] and len(report["checks"]) >= 5
    assert all(check["passed"] for check in report["checks"])
    result = invoke("run", "-m", str(file), "-p", PROMPT)
    assert result.exit_code == 0, result.output


# ---- a native architecture through --engine hf: transformers' reading vs the native port --------------

# measured: 0 (bit-identical logits in float32, bfloat16 and float16, eager and sdpa: both engines dequantize
# with gguf.quants and compute alike); the bound leaves float32 rounding room for another machine
NATIVE_VS_HF = 1e-5


def test_engine_hf_reads_the_native_sample_as_the_native_engine_does(tmp_path):
    native = attnscope.load_model("tiny-code-q4")
    engine = attnscope.load_model("tiny-code-q4", engine="hf")
    assert native.engine == "native" and engine.engine == "hf" and engine.layout.model_type == "llama"
    assert engine.path == native.path and engine.name == "tiny-code-q4"
    for text in TEXTS:
        assert engine.tokenizer.encode(text) == native.tokenizer.encode(text), text
    for backend in ("eager", "sdpa"):
        a = attnscope.Scope(engine, backend=backend).run(PROMPT)
        b = attnscope.Scope(native, backend=backend).run(PROMPT)
        assert a.ids == b.ids
        torch.testing.assert_close(a.logits, b.logits, atol=NATIVE_VS_HF, rtol=0)
    out = tmp_path / "report.json"
    result = invoke("check", "-m", str(sample("tiny-code-q4")), "-p", PROMPT, "--engine", "hf", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["engine"] == "hf"


# ---- bad files and engines: one line, exit code 2 ------------------------------------------------------------


def without(name: str):
    return lambda arrays: {n: (a, "F32") for n, a in arrays.items() if n != name}


def with_q8_k(name: str):
    """`name` as a Q8_K tensor (random bytes: blocks of a type gguf.quants cannot dequantize)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_K]

    def change(arrays):
        out = {n: (a, "F32") for n, a in arrays.items()}
        rows, cols = arrays[name].shape
        out[name] = (np.random.default_rng(0).integers(0, 255, (rows, cols // block * size), dtype=np.uint8), "Q8_K")
        return out

    return change


def wide_model(vocab: Vocab):
    """A Phi-3 whose rows fit Q8_K blocks (256 values)."""
    model = phi3_model(vocab)
    config = model.config.to_dict() | {"hidden_size": 256, "intermediate_size": 256}
    return transformers.Phi3ForCausalLM(transformers.Phi3Config.from_dict(config)).eval()


BAD = {
    # name: (how the file is written, the engine, what the line says)
    "neither-engine": (
        {"arch": "rwkv6"},
        "auto",
        "unsupported GGUF architecture 'rwkv6' (the native engine reads llama, qwen2, qwen3; the hf engine reads ",
    ),
    "hf-cannot-read": ({"arch": "rwkv6"}, "hf", "does not read GGUF architecture 'rwkv6' (it reads: "),
    "native-cannot-read": ({}, "native", "unsupported GGUF architecture 'phi3' (supported: llama, qwen2, qwen3)"),
    "missing-tensor": (
        {"tensors": without("blk.1.ffn_down.weight")},
        "auto",
        "the weights lack 1 of the model's tensors (first: model.layers.1.mlp.down_proj.weight)",
    ),
    "missing-layer": ({"block_count": 3}, "auto", "describes 3 layers but the weights hold 2"),
    "undequantizable": (
        {"tensors": with_q8_k("blk.0.ffn_down.weight")},
        "auto",
        "transformers cannot load it: Dequantization for Q8_K is not yet implemented",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_exit_2_with_one_line(vocab, phi3, tmp_path, name):
    options, engine, expected = BAD[name]
    model = wide_model(vocab) if name == "undequantizable" else phi3[0]
    file = write_phi3_gguf(model, vocab, tmp_path / f"{name}.gguf", **options)
    assert_user_error(invoke("check", "-m", str(file), "-p", "x", "--engine", engine), expected, file.name)


def test_memory_is_checked_before_transformers_allocates(phi3, monkeypatch):
    model, file = phi3
    loads = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 100 << 10)
    assert_user_error(
        invoke("check", "-m", str(file), "-p", "x"),
        f"the weights hold {sum(p.numel() for p in model.parameters()):,} parameters, about 801 KiB in float32, "
        "more than the 100 KiB of memory available",
    )
    assert not loads  # refused before transformers loaded anything


def test_without_transformers_auto_names_the_extra(phi3, monkeypatch):
    _, file = phi3
    monkeypatch.setitem(sys.modules, "transformers.modeling_gguf_pytorch_utils", None)
    assert_user_error(
        invoke("run", "-m", str(file), "-p", "x"),
        "unsupported GGUF architecture 'phi3' (the native engine reads llama, qwen2, qwen3; the hf engine "
        'reads more with transformers: pip install "attnscope[hf]")',
    )
