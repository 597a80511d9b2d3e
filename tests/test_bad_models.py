"""Model directories damaged in every way the loader reads them: each is one `UserError` (one line,
exit code 2 in the CLI) that names the file, the key and the value, raised before anything is
allocated from the bad value, never a traceback from deep inside torch."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB
from test_cli import assert_user_error
from test_loader import edit_config
from typer.testing import CliRunner

import attnscope
from attnscope.cli import app
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.model import memory
from attnscope.model.config import MAX_LAYERS, ModelConfig
from attnscope.model.llama import Transformer

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()


def cli_run(path: Path, prompt: str = "x", *extra: str):
    return runner.invoke(app, ["run", "-p", prompt, "-m", str(path), "--checks", "none", *extra])


def raises(path: Path, error: type[UserError], *fragments: str, **kwargs) -> str:
    with pytest.raises(error) as info:
        attnscope.load_model(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --- config.json: every field the loader reads, with its type and range --------------------------


BAD_FIELDS = [
    ("num_key_value_heads", "2"), ("num_key_value_heads", 2.0), ("num_key_value_heads", 0),
    ("num_key_value_heads", -2), ("num_key_value_heads", True),
    ("head_dim", "16"), ("head_dim", 0), ("head_dim", -16), ("head_dim", 16.5),
    ("max_position_embeddings", "128"), ("max_position_embeddings", 0), ("max_position_embeddings", -1),
    ("max_position_embeddings", 1.5e3), ("max_position_embeddings", 2**64),
    ("rms_norm_eps", "1e-6"), ("rms_norm_eps", 0), ("rms_norm_eps", -1e-6), ("rms_norm_eps", math.nan),
    ("rms_norm_eps", math.inf), ("rms_norm_eps", False),
    ("vocab_size", True), ("vocab_size", 100.0), ("hidden_size", [64]), ("intermediate_size", {"n": 1}),
    ("num_attention_heads", -4), ("num_hidden_layers", "2"), ("num_hidden_layers", MAX_LAYERS + 1),
    ("attention_bias", "false"), ("mlp_bias", 0), ("tie_word_embeddings", "no"),
    ("eos_token_id", VOCAB), ("eos_token_id", -1), ("eos_token_id", "2"), ("eos_token_id", 2.0),
    ("eos_token_id", [1, "2"]), ("eos_token_id", True), ("bos_token_id", VOCAB + 1), ("bos_token_id", [1]),
    ("layer_types", "full_attention"),
]
# (key, value, what the message quotes) where that is not the value's repr
BAD_FIELD_PARTS = [("eos_token_id", [1, VOCAB + 5], f"{VOCAB + 5} is outside the vocabulary"),
                   ("layer_types", [1, 2], "layer type 1")]


@pytest.mark.parametrize(("key", "value", "quoted"), [(k, v, repr(v)) for k, v in BAD_FIELDS] + BAD_FIELD_PARTS,
                         ids=[f"{k}={v!r}" for k, v, *_ in BAD_FIELDS + BAD_FIELD_PARTS])
def test_bad_config_field(model_copy, key, value, quoted):
    path = model_copy()
    edit_config(path, **{key: value})
    raises(path, ConfigError, "config.json", key, quoted)


def test_null_num_key_value_heads_means_one_per_query_head():
    """The one value that is replaced: absent or null, as in transformers; 0 is an error (above)."""
    base = ModelConfig(num_hidden_layers=2).to_hf()
    assert ModelConfig.from_hf({**base, "num_key_value_heads": None}).num_key_value_heads == 8
    del base["num_key_value_heads"]
    assert ModelConfig.from_hf(base).num_key_value_heads == 8


@pytest.mark.parametrize(
    ("rope", "fragments"),
    [
        ({"rope_parameters": {"rope_type": "default", "rope_theta": math.nan}}, ["rope_parameters.rope_theta", "nan"]),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, ["rope_parameters.rope_theta", "0"]),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": -1e4}}, ["rope_theta", "-10000.0"]),
        ({"rope_parameters": None, "rope_theta": "1e4"}, ["rope_theta", "'1e4'"]),
        ({"rope_parameters": None, "rope_theta": math.inf}, ["rope_theta", "inf"]),
        ({"rope_parameters": [10000.0]}, ["rope_parameters must be an object", "[10000.0]"]),
        ({"rope_parameters": None, "rope_scaling": "linear"}, ["rope_scaling must be an object", "'linear'"]),
        ({"rope_parameters": {"rope_type": "linear", "factor": "2"}}, ["rope_parameters.factor", "'2'"]),
        ({"rope_parameters": {"rope_type": "linear", "factor": math.nan}}, ["rope_parameters.factor", "nan"]),
        ({"rope_parameters": {"rope_type": "linear", "factor": 0}}, ["factor", "0"]),
        ({"rope_parameters": {"rope_type": "linear"}}, ["needs 'factor'"]),
        ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": [2]}}, ["rope_scaling.factor", "[2]"]),
        ({"rope_parameters": {"rope_type": 3}}, ["rope_scaling type 3"]),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}}, ["high_freq_factor (4.0)", "low_freq_factor"]),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64.0}}, ["original_max_position_embeddings", "64.0"]),
        ({"partial_rotary_factor": "half"}, ["partial_rotary_factor", "'half'"]),
        ({"partial_rotary_factor": 0.5}, ["partial_rotary_factor 0.5"]),
    ],
)
def test_bad_rope_fields(model_copy, rope, fragments):
    path = model_copy()
    edit_config(path, **rope)  # None: the key is removed
    raises(path, ConfigError, "config.json", *fragments)


@pytest.mark.parametrize("window", [0, -8, "8", 8.5, True])
def test_bad_sliding_window(model_copy, window):
    path = model_copy("mistral-sliding")
    edit_config(path, sliding_window=window)
    raises(path, ConfigError, "sliding_window", repr(window))


@pytest.mark.parametrize(("key", "value"), [("use_sliding_window", "yes"), ("max_window_layers", "1"),
                                            ("max_window_layers", -1)])
def test_bad_qwen_sliding_fields(model_copy, key, value):
    path = model_copy("qwen2-sliding")
    edit_config(path, layer_types=None, **{key: value})
    raises(path, ConfigError, key, repr(value))


def test_sliding_window_null_means_no_window(model_copy):
    path = model_copy("mistral-sliding")
    edit_config(path, layer_types=None)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "sliding_window": None}))
    assert [repr(m) for m in attnscope.load_model(path).net.masks] == ["causal", "causal"]


def test_config_json_not_utf8(model_copy):
    path = model_copy()
    (path / "config.json").write_bytes(b'{"model_type": "llama\xff"}')
    raises(path, LoadError, "config.json", "not UTF-8", "0xff")


@pytest.mark.parametrize("text", ["[" * 100_000, '{"vocab_size": 1' + "0" * 5000 + "}"], ids=["nested", "digits"])
def test_config_json_that_python_cannot_parse(model_copy, text):
    path = model_copy()
    (path / "config.json").write_text(text)
    raises(path, LoadError, "config.json", "malformed JSON")


def test_bad_config_field_through_the_cli(model_copy):
    path = model_copy()
    edit_config(path, num_key_value_heads="2")
    assert_user_error(cli_run(path), "config.json", "num_key_value_heads", "'2'")


# --- sizes, before anything is allocated ----------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-gqa", "llama-linear-bias-tied", "qwen2", "qwen3"])
def test_parameter_count_matches_the_model(zoo, name):
    config = zoo.loaded(name).config
    with torch.device("meta"):
        net = Transformer(config)
    assert memory.parameter_count(config) == sum(p.numel() for p in net.parameters())


@pytest.fixture
def memory_of_64_gib(monkeypatch):
    """A fixed memory size, so that a machine with more RAM than the model needs cannot make the
    refusal tests build it."""
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 64 << 30)


@pytest.mark.usefixtures("memory_of_64_gib")
def test_a_million_layers_are_refused_before_allocation(model_copy):
    import time

    path = model_copy()
    edit_config(path, num_hidden_layers=1_000_000, layer_types=None)
    start = time.perf_counter()
    raises(path, ConfigError, "1,000,000 layers", "parameters", "float32", "GiB in float32",
           "64 GiB of memory available")
    assert time.perf_counter() - start < 10, "the size check must come before building the model"


def test_a_model_larger_than_the_memory_is_refused(zoo, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 100 << 10)
    config = zoo.loaded("llama-gqa").config
    need = memory.model_bytes(config, torch.float32)
    assert need > 100 << 10
    msg = raises(zoo["llama-gqa"].path, ConfigError, f"{memory.parameter_count(config):,} parameters",
                 memory.format_bytes(need), "100 KiB of memory available")
    assert "float32" in msg
    # in float16 the same model needs less
    assert memory.model_bytes(config, torch.float16) < need


def test_available_memory_is_read():
    free = memory.available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(free, int) and free > 0


def test_kv_cache_check(zoo):
    config = ModelConfig(num_hidden_layers=2, max_position_embeddings=10**12)
    per_position = 2 * 2 * config.num_key_value_heads * config.head_dim * 4
    assert memory.kv_cache_bytes(config, 3, 10, torch.float32) == 3 * 10 * per_position
    memory.check_kv_cache_fits(config, 1, 1024, torch.float32)  # fits anywhere
    with pytest.raises(UserError) as info:
        memory.check_kv_cache_fits(config, 1, 10**12, torch.float32, "cpu")
    msg = str(info.value)
    assert "KV cache" in msg and "1,000,000,000,000 positions" in msg and "memory available" in msg
    assert "2 layers × 2 kv heads × head_dim 32 × 4 bytes" in msg and "\n" not in msg


@pytest.mark.usefixtures("memory_of_64_gib")
def test_huge_layer_count_through_the_cli(model_copy):
    path = model_copy()
    edit_config(path, num_hidden_layers=1_000_000, layer_types=None)
    assert_user_error(cli_run(path), "1,000,000 layers", "64 GiB of memory available")
