"""Loading model directories, and the errors a user can cause.

Every bad input must raise a `UserError` subclass whose message names the problem (the CLI shows it
as one line, exit code 2), never a bare KeyError/RuntimeError/traceback from deep inside torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.models import MAX_POSITIONS, VOCAB, random_ids

import attnscope
from attnscope.errors import BackendUnavailable, ConfigError, LoadError, UserError
from attnscope.model.loader import resolve_dtype

pytestmark = pytest.mark.usefixtures("single_thread")


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def edit_tensors(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def logits(model, ids=None) -> torch.Tensor:
    ids = random_ids(16) if ids is None else ids
    with torch.inference_mode():
        return model.net(ids).float()


# --- paths and files ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(LoadError) as info:
        attnscope.load_model(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


def test_file_instead_of_directory(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"not a model")
    with pytest.raises(LoadError, match="not a directory"):
        attnscope.load_model(file)


def test_directory_without_config(tmp_path):
    with pytest.raises(LoadError, match=r"no config\.json"):
        attnscope.load_model(tmp_path)


def test_malformed_config_json(model_copy):
    path = model_copy()
    (path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    with pytest.raises(LoadError) as info:
        attnscope.load_model(path)
    assert "config.json" in str(info.value) and "malformed JSON" in str(info.value)


def test_config_json_not_an_object(model_copy):
    path = model_copy()
    (path / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(LoadError, match="JSON object"):
        attnscope.load_model(path)


def test_no_weights(model_copy):
    path = model_copy()
    (path / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="no weights"):
        attnscope.load_model(path)


def test_corrupt_safetensors(model_copy):
    path = model_copy()
    (path / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(LoadError, match="safetensors"):
        attnscope.load_model(path)


# --- config ---------------------------------------------------------------------------------------


def test_unsupported_model_type(model_copy):
    path = model_copy()
    edit_config(path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ConfigError, match="'gpt2'"):
        attnscope.load_model(path, engine="native")
    with pytest.raises(UserError, match="the weights lack"):  # auto: transformers' GPT-2, unfilled
        attnscope.load_model(path)


def test_missing_model_type(model_copy):
    path = model_copy()
    edit_config(path, model_type=None)
    with pytest.raises(ConfigError, match="model_type"):
        attnscope.load_model(path)


@pytest.mark.parametrize(
    "rope",
    [
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        },
        # the transformers 4 format
        {"rope_parameters": None, "rope_theta": 10000.0, "rope_scaling": {"type": "yarn", "factor": 4.0}},
    ],
    ids=["rope_parameters", "rope_scaling"],
)
def test_unsupported_rope_type(model_copy, rope):
    path = model_copy()
    edit_config(path, **rope)
    with pytest.raises(ConfigError, match="'yarn'"):
        attnscope.load_model(path)


def test_transformers4_rope_format_loads(model_copy, zoo):
    """rope_theta + rope_scaling (the older format) means the same as rope_parameters."""
    path = model_copy("llama-llama3-rope")
    cfg = json.loads((path / "config.json").read_text())
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(cfg))
    model = attnscope.load_model(path)
    torch.testing.assert_close(logits(model), logits(zoo.loaded("llama-llama3-rope")), atol=0, rtol=0)


def test_heads_not_divisible_by_kv_heads(model_copy):
    path = model_copy()
    edit_config(path, num_key_value_heads=3)
    with pytest.raises(ConfigError) as info:
        attnscope.load_model(path)
    msg = str(info.value)
    assert "num_attention_heads" in msg and "num_key_value_heads" in msg and "divisible" in msg


def test_unsupported_activation(model_copy):
    path = model_copy()
    edit_config(path, hidden_act="gelu")
    with pytest.raises(ConfigError, match="'gelu'"):
        attnscope.load_model(path)


# --- tensors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model.layers.1.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"])
def test_missing_tensor(model_copy, key):
    path = model_copy()
    edit_tensors(path, lambda t: t.pop(key))
    with pytest.raises(LoadError) as info:
        attnscope.load_model(path)
    msg = str(info.value)
    assert "lack" in msg or "missing" in msg
    # the tensor is named as it is in the checkpoint (the HF name), so the user can look for it
    assert repr(key) in msg, msg


def test_wrongly_shaped_tensor(model_copy):
    key = "model.layers.0.self_attn.k_proj.weight"
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__(key, torch.zeros(16, 64)))
    with pytest.raises(LoadError) as info:
        attnscope.load_model(path)
    msg = str(info.value)
    assert repr(key) in msg and "(16, 64)" in msg and "(32, 64)" in msg


def test_unexpected_tensor(model_copy):
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__("model.layers.0.self_attn.q_norm.weight", torch.ones(16)))
    with pytest.raises(LoadError, match="q_norm"):
        attnscope.load_model(path)


def test_old_checkpoints_with_rotary_inv_freq_load(model_copy, zoo):
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8)))
    torch.testing.assert_close(logits(attnscope.load_model(path)), logits(zoo.loaded("llama-gqa")), atol=0, rtol=0)


# --- pickle and shards --------------------------------------------------------------------------


@pytest.fixture
def pickled_dir(model_copy, zoo):
    path = model_copy()
    (path / "model.safetensors").unlink()
    torch.save(zoo["llama-gqa"].hf.state_dict(), path / "pytorch_model.bin")
    return path


def test_pickle_refused_by_default(pickled_dir):
    with pytest.raises(LoadError) as info:
        attnscope.load_model(pickled_dir)
    msg = str(info.value)
    assert "pytorch_model.bin" in msg and "--allow-pickle" in msg and "safetensors" in msg


def test_pickle_loaded_with_opt_in(pickled_dir, zoo):
    model = attnscope.load_model(pickled_dir, allow_pickle=True)
    torch.testing.assert_close(logits(model), logits(zoo.loaded("llama-gqa")), atol=0, rtol=0)


def test_pickle_with_code_refused_even_with_opt_in(model_copy):
    """allow_pickle reads with weights_only=True: a pickle that would run code is a LoadError."""
    path = model_copy()
    (path / "model.safetensors").unlink()
    torch.save({"model.norm.weight": torch.ones(64), "evil": os.system}, path / "pytorch_model.bin")
    with pytest.raises(LoadError, match="weights_only"):
        attnscope.load_model(path, allow_pickle=True)


def test_safetensors_preferred_over_pickle(model_copy, zoo):
    path = model_copy()
    (path / "pytorch_model.bin").write_bytes(b"never read")
    torch.testing.assert_close(logits(attnscope.load_model(path)), logits(zoo.loaded("llama-gqa")), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "llama-linear-bias-tied"])
def test_sharded_safetensors(zoo, tmp_path, name):
    path = tmp_path / "sharded"
    zoo[name].hf.save_pretrained(path, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    seen = []
    model = attnscope.load_model(path, progress=lambda done, total, what: seen.append((done, total)))
    torch.testing.assert_close(logits(model), logits(zoo.loaded(name)), atol=0, rtol=0)
    assert seen[-1][0] == seen[-1][1] > 1


def test_sharded_with_missing_shard(zoo, tmp_path):
    path = tmp_path / "sharded"
    zoo["llama-gqa"].hf.save_pretrained(path, max_shard_size="100KB")
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(LoadError, match=shard.name):
        attnscope.load_model(path)


# --- dtype and device ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "int8", "half-ish", torch.float64])
def test_unknown_dtype(zoo, dtype):
    with pytest.raises(UserError, match="dtype"):
        attnscope.load_model(zoo["llama-gqa"].path, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_device(zoo):
    with pytest.raises(UserError, match="cuda"):
        attnscope.load_model(zoo["llama-gqa"].path, device="cuda")


@pytest.mark.parametrize("device", ["nope", "cuda:99", "meta"])
def test_bad_device(zoo, device):
    with pytest.raises(UserError, match="device"):
        attnscope.load_model(zoo["llama-gqa"].path, device=device)


@pytest.mark.parametrize(("dtype", "tol"), [("float16", 0.02), ("bfloat16", 0.1), ("bf16", 0.1), (torch.float16, 0.02)])
def test_low_precision_loads(zoo, dtype, tol):
    name = "qwen3"
    model = attnscope.load_model(zoo[name].path, dtype=dtype)
    assert model.dtype == resolve_dtype(dtype)
    assert all(p.dtype == model.dtype for p in model.net.parameters())
    ids = zoo[name].ids()
    reference = attnscope.Scope(zoo.loaded(name)).run(ids[0].tolist()).logits
    for backend in ("eager", "sdpa"):
        result = attnscope.Scope(model, backend=backend).run(ids[0].tolist())
        assert result.logits.dtype == torch.float32
        assert torch.isfinite(result.logits).all()
        scale = reference.abs().max()
        assert (result.logits - reference).abs().max() <= tol * scale, backend
        probs = result.attention(1, 2)
        assert torch.isfinite(probs).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]), atol=1e-2, rtol=0)


# --- Scope input errors -------------------------------------------------------------------------


@pytest.fixture
def scope(zoo):
    return attnscope.Scope(zoo.loaded("llama-gqa"))


@pytest.mark.parametrize("prompt", [[], ""], ids=["no-ids", "empty-text"])
def test_empty_prompt(scope, prompt):
    with pytest.raises(UserError, match="empty"):
        scope.run(prompt)


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 7, -1])
def test_token_id_out_of_range(scope, bad):
    with pytest.raises(UserError) as info:
        scope.run([1, 2, bad, 3])
    assert str(bad) in str(info.value) and "out of range" in str(info.value)


def test_text_prompt_without_tokenizer(scope):
    with pytest.raises(UserError, match="tokenizer"):
        scope.run("hello")


def test_prompt_longer_than_positions(scope):
    with pytest.raises(UserError) as info:
        scope.run(list(range(10)) * (MAX_POSITIONS // 10 + 1))
    assert str(MAX_POSITIONS) in str(info.value)
    with pytest.raises(UserError, match=str(MAX_POSITIONS)):
        scope.run([1] * (MAX_POSITIONS - 2), max_new_tokens=3)
    assert len(scope.run([1] * MAX_POSITIONS).logits) == MAX_POSITIONS  # exactly at the limit is fine


def test_negative_max_new_tokens(scope):
    with pytest.raises(UserError, match="max_new_tokens"):
        scope.run([1, 2, 3], max_new_tokens=-1)


def test_layer_and_head_out_of_range(scope):
    result = scope.run([1, 2, 3])
    with pytest.raises(UserError, match="layer 2"):
        result.attention(2, 0)
    with pytest.raises(UserError, match="head 4"):
        result.attention(0, 4)


def test_unknown_backend(zoo):
    with pytest.raises(UserError) as info:
        attnscope.Scope(zoo.loaded("llama-gqa"), backend="nope")
    assert "'nope'" in str(info.value) and "eager" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; triton may run")
def test_triton_backend_unavailable_without_gpu(zoo, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable) as info:
        attnscope.Scope(zoo.loaded("llama-gqa"), backend="triton")
    msg = str(info.value)
    assert "triton" in msg and "not available" in msg
    assert "\n" not in msg  # one clear line for the CLI


def test_errors_are_user_errors():
    assert issubclass(LoadError, UserError) and issubclass(ConfigError, UserError)
    assert issubclass(BackendUnavailable, UserError)


def test_loaded_model_metadata(zoo):
    model = zoo.loaded("qwen3")
    assert model.tokenizer is None
    assert model.path == zoo["qwen3"].path and model.name == "qwen3"
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    assert "qwen3" in repr(model) and "heads=4/2" in repr(model)
    assert not model.net.training


# --- more config formats ------------------------------------------------------------------------


def test_qwen2_sliding_layers_from_max_window_layers(model_copy, zoo):
    """Without layer_types (older config.json), layers >= max_window_layers slide, as in HF."""
    path = model_copy("qwen2-sliding")
    edit_config(path, layer_types=None)
    model = attnscope.load_model(path)
    assert [repr(m) for m in model.net.masks] == ["causal", "causal & sliding_window(8)"]
    ids = zoo["qwen2-sliding"].ids()
    torch.testing.assert_close(logits(model, ids), logits(zoo.loaded("qwen2-sliding"), ids), atol=0, rtol=0)


def test_qwen2_without_use_sliding_window_ignores_window(model_copy):
    path = model_copy("qwen2")
    edit_config(path, sliding_window=8, use_sliding_window=False, layer_types=None)
    assert [repr(m) for m in attnscope.load_model(path).net.masks] == ["causal", "causal"]


def test_old_linear_rope_scaling_format(model_copy, zoo):
    """transformers 4 wrote {"type": "linear", "factor": ...} under rope_scaling."""
    path = model_copy("llama-linear-bias-tied")
    edit_config(path, rope_parameters=None, rope_theta=500.0, rope_scaling={"type": "linear", "factor": 2.0})
    ids = zoo["llama-linear-bias-tied"].ids()
    torch.testing.assert_close(
        logits(attnscope.load_model(path), ids), logits(zoo.loaded("llama-linear-bias-tied"), ids), atol=0, rtol=0
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tied_embeddings_stay_tied_in_low_precision(zoo, dtype):
    model = attnscope.load_model(zoo["llama-linear-bias-tied"].path, dtype=dtype)
    net = model.net
    assert net.lm_head.weight is net.embed_tokens.weight
    assert net.lm_head.weight.dtype == resolve_dtype(dtype)
    reference = logits(zoo.loaded("llama-linear-bias-tied"))
    assert (logits(model) - reference).abs().max() <= 0.1 * reference.abs().max()


# --- tokenizer ----------------------------------------------------------------------------------


def write_word_tokenizer(path: Path, n_words: int) -> None:
    """A whitespace word-level tokenizer: "w0".."w{n-1}" are ids 0..n-1, then [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(n_words)}
    vocab["[UNK]"] = n_words
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


def test_text_prompt_with_tokenizer(model_copy, zoo):
    path = model_copy()
    write_word_tokenizer(path, 50)
    model = attnscope.load_model(path)
    assert model.tokenizer is not None
    result = attnscope.Scope(model).run("w3 w1 w4 w1 w5")
    assert result.ids == [3, 1, 4, 1, 5]
    assert result.tokens == ["w3", "w1", "w4", "w1", "w5"]
    by_ids = attnscope.Scope(zoo.loaded("llama-gqa")).run([3, 1, 4, 1, 5])
    torch.testing.assert_close(result.logits, by_ids.logits, atol=0, rtol=0)


def test_bos_from_tokenizer_config(model_copy):
    path = model_copy()
    write_word_tokenizer(path, 50)
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w7", "add_bos_token": True}))
    assert attnscope.Scope(attnscope.load_model(path)).run("w3 w1").ids == [7, 3, 1]


def test_tokenizer_larger_than_vocab(model_copy):
    path = model_copy()
    write_word_tokenizer(path, VOCAB + 20)
    with pytest.raises(ConfigError) as info:
        attnscope.load_model(path)
    assert str(VOCAB) in str(info.value) and "vocab_size" in str(info.value)


def test_malformed_tokenizer(model_copy):
    path = model_copy()
    (path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LoadError, match="tokenizer.json"):
        attnscope.load_model(path)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_config_round_trips_through_config_json(model_type):
    from attnscope.model.config import ModelConfig

    sliding = (
        {} if model_type == "llama" else {"sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}
    )
    config = ModelConfig(
        model_type=model_type,
        num_hidden_layers=2,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        **sliding,
    )
    assert ModelConfig.from_hf(config.to_hf()) == config


def test_config_without_a_hf_equivalent_is_refused():
    from attnscope.model.config import ModelConfig

    with pytest.raises(ConfigError, match="output-projection bias"):
        ModelConfig(o_bias=True, qkv_bias=False).to_hf()
