"""The llama.cpp engine (attnscope/llamacpp.py) on GGUF files written here from tiny-code (llama, NORM
rotary order) and a random Qwen3 and Qwen2 (NEOX order, q/k norms, biases), in F32, F16 and Q8_0, and
on the committed Q4_K sample:

(a) probabilities recomputed from the records (exp(q·k·scale − lse)) equal llama.cpp's own
    ``kq_soft_max`` (~1e-6);
(b) on F32 files with an F32 KV cache, q and k mapped to Hugging Face's order (and v, the output,
    the lse, the logits) equal the native engine's on the same file (<= 1e-5);
(c) full_vs_incremental inside llama.cpp (a token, and 4 tokens, per llama_decode) passes on correct
    files, and every check and the run/heads/compare commands work;
(d) a planted fault (one layer's attn_k perturbed) is found at that layer, with k the input that
    differs;
(e) bad usage (another backend, a directory, no llama-cpp-python, a struct layout that does not
    match) is one line.

Skipped without llama-cpp-python (CI does not build it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.models import build_hf_model
from test_cli import assert_user_error, invoke

import attnscope
from attnscope.backends.eager import attend as eager
from attnscope.errors import LoadError, UserError
from attnscope.inspector.capture import Capture

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
llamacpp = pytest.importorskip("attnscope.llamacpp")
pytestmark = pytest.mark.usefixtures("single_thread")

from attnscope.sample_models.make_gguf import bpe_vocab, write_gguf  # noqa: E402  (needs gguf)

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n"
FAULT_LAYER = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_code) -> dict[str, Path]:
    """GGUF files by name: tiny-code in F32/F16/Q8_0, a Qwen3 and a Qwen2 in F32, the Q4_K sample, and
    tiny-code F32 with layer `FAULT_LAYER`'s attn_k perturbed."""
    import shutil

    root = tmp_path_factory.mktemp("llamacpp")
    out = {kind: write_gguf(tiny_code, root / f"tiny-{kind}.gguf", kind) for kind in ("F32", "F16", "Q8_0")}
    for arch in ("qwen3", "qwen2"):
        src = root / arch
        build_hf_model(arch, seed=5, vocab_size=1024).save_pretrained(src)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_code / name, src / name)
        out[arch] = write_gguf(src, root / f"{arch}.gguf", "F32", vocab=bpe_vocab(src, pre="qwen2"))
    out["Q4_K"] = next((tiny_code.parent / "tiny-code-q4").glob("*.gguf"))
    faulty = root / "tiny-F32-fault.gguf"
    shutil.copy(out["F32"], faulty)
    reader = gguf.GGUFReader(str(faulty), "r+")
    (tensor,) = [t for t in reader.tensors if t.name == f"blk.{FAULT_LAYER}.attn_k.weight"]
    tensor.data[:] += np.random.default_rng(0).normal(0, 0.05, tensor.data.shape).astype(np.float32)
    reader.data.flush()
    out["fault"] = faulty
    return out


def record(engine, prompt: str = PROMPT):
    ids = torch.tensor([engine.tokenizer.encode(prompt)])
    capture = Capture(n_layers=engine.layout.n_layers)
    logits = engine.forward(ids, cache=engine.new_cache(1, ids.shape[1]), recorder=capture, probabilities=True)
    return ids, capture.layers(), logits


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("F32", "float32"), ("F16", "float16"), ("Q8_0", "float16"), ("Q4_K", "float32"), ("qwen3", "float32")],
)
def test_recomputed_probabilities_equal_llama_cpps(files, name, dtype):
    engine = attnscope.load_model(files[name], dtype=dtype, engine="llama.cpp")
    _, records, _ = record(engine)
    for rec, theirs in zip(records, engine.last_probabilities, strict=True):
        ours = torch.stack([rec.probabilities(h) for h in range(engine.layout.n_heads)])  # (Hq, T, T)
        assert float((ours - theirs).abs().max()) < 1e-5
        assert float((theirs.sum(-1) - 1).abs().max()) < 1e-5  # cell i is position i: all the mass is there


@pytest.mark.parametrize("name", ["F32", "qwen3", "qwen2"])
def test_q_k_in_hf_order_equal_the_native_engines(files, name):
    """F32 file, F32 KV cache: llama.cpp's q/k (NORM order for llama, NEOX for qwen) mapped to HF's."""
    engine = attnscope.load_model(files[name], engine="llama.cpp")
    native = attnscope.load_model(files[name], engine="native")
    ids, records, logits = record(engine)
    capture = Capture(n_layers=native.layout.n_layers)
    with torch.inference_mode():
        native_logits = native.forward(ids, eager, recorder=capture)
    for ours, theirs in zip(records, capture.layers(), strict=True):
        for field in ("q", "k", "v", "out", "lse"):
            assert float((getattr(ours, field) - getattr(theirs, field)).abs().max()) <= 1e-5, field
        assert ours.scale == pytest.approx(theirs.scale)
    assert float((logits - native_logits).abs().max()) <= 1e-4


@pytest.mark.parametrize(
    ("name", "dtype", "chunk"),
    [("F32", "float32", 1), ("F16", "float16", 1), ("Q8_0", "float16", 4), ("Q4_K", "float32", 1)],
)
def test_all_checks_pass_on_correct_files(files, name, dtype, chunk):
    engine = attnscope.load_model(files[name], dtype=dtype, engine="llama.cpp")
    engine.chunk = chunk
    result = attnscope.Scope(engine).run(PROMPT, max_new_tokens=4, checks="all")
    failed = [(c.name, c.message) for c in result.checks if not c.passed]
    assert not failed
    assert result.backend == "llama.cpp"
    assert len(result.continuation_ids) == 4
    report = result.report()
    assert report.backend == "llama.cpp" and report.passed


def test_decode_continues_through_llama_cpps_cache(files):
    """The greedy continuation through llama.cpp's cache equals what whole-prompt forwards give."""
    engine = attnscope.load_model(files["F32"], engine="llama.cpp")
    result = attnscope.Scope(engine).run(PROMPT, max_new_tokens=6)
    ids = engine.tokenizer.encode(PROMPT)
    assert len(result.continuation_ids) == 6
    for token in result.continuation_ids:
        logits = engine.forward(torch.tensor([ids]))
        assert int(logits[0, -1].argmax()) == token
        ids.append(token)


def test_a_perturbed_attn_k_is_found_at_its_layer_with_k_differing(files):
    clean = attnscope.load_model(files["F32"], engine="llama.cpp")
    faulty = attnscope.load_model(files["fault"], engine="llama.cpp")
    first = attnscope.compare(clean, faulty, PROMPT).first_divergence()
    assert first is not None
    assert (first["layer"], first["stage"], first["differs"]) == (FAULT_LAYER, "attention", ["k"])


def test_compare_with_the_hf_directory_finds_no_divergence_on_f32(files, tiny_code):
    result = invoke("compare", "-m", str(tiny_code), "-m", str(files["F32"]), "--engine-b", "llama.cpp", "-p", PROMPT)
    assert result.exit_code == 0, result.output
    assert "no layer crosses the tolerance" in result.output
    result = invoke("compare", "-m", str(tiny_code), "-m", str(files["Q4_K"]), "--engine-b", "llama.cpp", "-p", PROMPT)
    assert "first divergence at layer 0" in result.output


def test_run_and_heads_commands(files):
    result = invoke("run", "-m", str(files["Q8_0"]), "--engine", "llama.cpp", "-p", PROMPT, "--checks", "all")
    assert result.exit_code == 0, result.output
    assert "engine llama.cpp" in result.output
    result = invoke("heads", "-m", str(files["F32"]), "--engine", "llama.cpp")
    assert result.exit_code == 0, result.output


def test_bad_usage_is_one_line(files, tiny_code):
    assert_user_error(
        invoke("run", "-m", str(files["F32"]), "--engine", "llama.cpp", "--backend", "sdpa", "-p", "x"),
        "own kernel",
        "--backend sdpa",
    )
    assert_user_error(invoke("run", "-m", str(tiny_code), "--engine", "llama.cpp", "-p", "x"), "GGUF files")
    engine = attnscope.load_model(files["F32"], engine="llama.cpp")
    with pytest.raises(UserError, match="own kernel"):
        engine.forward(torch.tensor([[1, 2]]), eager)
    with pytest.raises(UserError, match="one prompt at a time"):
        attnscope.Scope(engine).run(["def f(x):", "x"])


def test_a_struct_layout_that_does_not_match_is_refused(files, monkeypatch):
    """A field added before the name (as a changed ggml.h would): the name no longer reads as ggml's."""
    import ctypes

    fields = [(n, t) for n, t in llamacpp._Tensor._fields_]
    index = [n for n, _ in fields].index("view_offs")
    fields.insert(index, ("added", ctypes.c_size_t))
    monkeypatch.setattr(llamacpp, "_Tensor", type("Changed", (ctypes.Structure,), {"_fields_": fields}))
    engine = llamacpp.LlamaCppEngine(files["F32"])
    with pytest.raises(LoadError, match="struct ggml_tensor is not laid out"):
        record(engine)


def test_without_llama_cpp_python_the_error_says_how_to_install(files):
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "import attnscope\n"
        "from attnscope.errors import UserError\n"
        "try:\n"
        f"    attnscope.load_model({str(files['F32'])!r}, engine='llama.cpp')\n"
        "except UserError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "attnscope[llamacpp]"' in out and "llama-cpp-python==0.3.36" in out
