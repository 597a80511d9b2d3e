"""Model directories damaged in every way the loader reads them: each is one `UserError` (one line,
exit code 2 in the CLI) that names the file, the key and the value, raised before anything is
allocated from the bad value, never a traceback from deep inside torch."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from support.models import VOCAB
from test_cli import assert_user_error
from test_loader import edit_config, edit_tensors, write_word_tokenizer
from typer.testing import CliRunner

import attnscope
from attnscope.cli import app
from attnscope.errors import ConfigError, LoadError, UserError
from attnscope.model import memory
from attnscope.model.config import MAX_LAYERS, ModelConfig
from attnscope.model.llama import Transformer
from attnscope.model.native import config_layout

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
    ("num_key_value_heads", "2"),
    ("num_key_value_heads", 2.0),
    ("num_key_value_heads", 0),
    ("num_key_value_heads", -2),
    ("num_key_value_heads", True),
    ("head_dim", "16"),
    ("head_dim", 0),
    ("head_dim", -16),
    ("head_dim", 16.5),
    ("max_position_embeddings", "128"),
    ("max_position_embeddings", 0),
    ("max_position_embeddings", -1),
    ("max_position_embeddings", 1.5e3),
    ("max_position_embeddings", 2**64),
    ("rms_norm_eps", "1e-6"),
    ("rms_norm_eps", 0),
    ("rms_norm_eps", -1e-6),
    ("rms_norm_eps", math.nan),
    ("rms_norm_eps", math.inf),
    ("rms_norm_eps", False),
    ("vocab_size", True),
    ("vocab_size", 100.0),
    ("hidden_size", [64]),
    ("intermediate_size", {"n": 1}),
    ("num_attention_heads", -4),
    ("num_hidden_layers", "2"),
    ("num_hidden_layers", MAX_LAYERS + 1),
    ("attention_bias", "false"),
    ("mlp_bias", 0),
    ("tie_word_embeddings", "no"),
    ("eos_token_id", VOCAB),
    ("eos_token_id", -1),
    ("eos_token_id", "2"),
    ("eos_token_id", 2.0),
    ("eos_token_id", [1, "2"]),
    ("eos_token_id", True),
    ("bos_token_id", VOCAB + 1),
    ("bos_token_id", [1]),
    ("layer_types", "full_attention"),
]
# (key, value, what the message quotes) where that is not the value's repr
BAD_FIELD_PARTS = [
    ("eos_token_id", [1, VOCAB + 5], f"{VOCAB + 5} is outside the vocabulary"),
    ("layer_types", [1, 2], "layer type 1"),
]


@pytest.mark.parametrize(
    ("key", "value", "quoted"),
    [(k, v, repr(v)) for k, v in BAD_FIELDS] + BAD_FIELD_PARTS,
    ids=[f"{k}={v!r}" for k, v, *_ in BAD_FIELDS + BAD_FIELD_PARTS],
)
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
        (
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
            ["high_freq_factor (4.0)", "low_freq_factor"],
        ),
        (
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64.0,
                }
            },
            ["original_max_position_embeddings", "64.0"],
        ),
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


@pytest.mark.parametrize(
    ("key", "value"), [("use_sliding_window", "yes"), ("max_window_layers", "1"), ("max_window_layers", -1)]
)
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
    raises(
        path, ConfigError, "1,000,000 layers", "parameters", "float32", "GiB in float32", "64 GiB of memory available"
    )
    assert time.perf_counter() - start < 10, "the size check must come before building the model"


def test_a_model_larger_than_the_memory_is_refused(zoo, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 100 << 10)
    config = zoo.loaded("llama-gqa").config
    need = memory.model_bytes(config, torch.float32)
    assert need > 100 << 10
    msg = raises(
        zoo["llama-gqa"].path,
        ConfigError,
        f"{memory.parameter_count(config):,} parameters",
        memory.format_bytes(need),
        "100 KiB of memory available",
    )
    assert "float32" in msg
    # in float16 the same model needs less
    assert memory.model_bytes(config, torch.float16) < need


def test_available_memory_is_read():
    free = memory.available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(free, int) and free > 0


def test_kv_cache_check(zoo):
    config = config_layout(ModelConfig(num_hidden_layers=2, max_position_embeddings=10**12))
    per_position = 2 * 2 * config.n_kv_heads * config.head_dim * 4
    assert memory.kv_cache_bytes(config, 3, 10, torch.float32) == 3 * 10 * per_position
    memory.require_kv_cache_fits(config, 1, 1024, torch.float32)  # fits anywhere
    with pytest.raises(UserError) as info:
        memory.require_kv_cache_fits(config, 1, 10**12, torch.float32, "cpu")
    msg = str(info.value)
    assert "KV cache" in msg and "1,000,000,000,000 positions" in msg and "memory available" in msg
    assert "2 layers × 2 kv heads × head_dim 32 × 4 bytes" in msg and "\n" not in msg


@pytest.mark.usefixtures("memory_of_64_gib")
def test_huge_layer_count_through_the_cli(model_copy):
    path = model_copy()
    edit_config(path, num_hidden_layers=1_000_000, layer_types=None)
    assert_user_error(cli_run(path), "1,000,000 layers", "64 GiB of memory available")


# --- weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.uint8])
def test_integer_and_bool_tensors_are_refused(model_copy, dtype):
    key = "model.norm.weight"
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__(key, torch.ones(64, dtype=dtype)))
    raises(path, LoadError, repr(key), "dtype", "floating-point")


def test_integer_tensor_in_a_pickle_is_refused(model_copy, zoo):
    path = model_copy()
    (path / "model.safetensors").unlink()
    state = dict(zoo["llama-gqa"].hf.state_dict())
    state["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
    torch.save(state, path / "pytorch_model.bin")
    raises(path, LoadError, "'model.norm.weight'", "int32", allow_pickle=True)


def test_integer_tensor_through_the_cli(model_copy):
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__("model.norm.weight", torch.ones(64, dtype=torch.int64)))
    assert_user_error(cli_run(path), "model.norm.weight", "I64")


@pytest.fixture
def sharded(zoo, tmp_path):
    path = tmp_path / "sharded"
    zoo["llama-gqa"].hf.save_pretrained(path, max_shard_size="100KB")
    return path


def edit_index(path: Path, edit) -> None:
    file = path / "model.safetensors.index.json"
    index = json.loads(file.read_text())
    edit(index)
    file.write_text(json.dumps(index))


def rename_shard(index: dict, new: str) -> None:
    old = next(iter(index["weight_map"].values()))
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_shards_must_lie_inside_the_model_directory(sharded, tmp_path, where):
    first = sorted(sharded.glob("model-*.safetensors"))[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(first, outside / first.name)
    if where == "symlink":
        first.unlink()
        first.symlink_to(outside / first.name)
        name = first.name
    else:
        name = str(outside / first.name) if where == "absolute" else f"../elsewhere/{first.name}"
        edit_index(sharded, lambda index: rename_shard(index, name))
    raises(sharded, LoadError, "model.safetensors.index.json", repr(name))


def test_shards_linked_into_a_hub_cache_blobs_directory_load(zoo, tmp_path):
    """The Hugging Face hub cache keeps files in blobs/ and links them from snapshots/<revision>/."""
    repo = tmp_path / "models--tiny--llama"
    snapshot = repo / "snapshots" / "0123abc"
    zoo["llama-gqa"].hf.save_pretrained(snapshot, max_shard_size="100KB")
    (repo / "blobs").mkdir()
    for shard in snapshot.glob("model-*.safetensors"):
        shard.rename(repo / "blobs" / shard.name)
        shard.symlink_to(Path("../..") / "blobs" / shard.name)
    assert attnscope.load_model(snapshot).config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "weight_map",
    [["model-00001-of-00002.safetensors"], {"model.norm.weight": 5}, {}, None],
    ids=["list", "non-string", "empty", "null"],
)
def test_malformed_weight_map(sharded, weight_map):
    edit_index(sharded, lambda index: index.__setitem__("weight_map", weight_map))
    raises(sharded, LoadError, "model.safetensors.index.json", "weight_map")


def test_index_naming_pickled_shards_needs_allow_pickle(zoo, tmp_path):
    path = tmp_path / "pickled-shards"
    zoo["llama-gqa"].hf.save_pretrained(path, max_shard_size="100KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    for shard in sorted(path.glob("model-*.safetensors")):
        torch.save(load_file(str(shard)), shard.with_suffix(".bin"))
        shard.unlink()
    index["weight_map"] = {k: v.replace(".safetensors", ".bin") for k, v in index["weight_map"].items()}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    raises(path, LoadError, ".bin", "--allow-pickle")
    assert attnscope.load_model(path, allow_pickle=True).config.num_hidden_layers == 2


def test_pickle_index_needs_allow_pickle(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    for shard in sorted(sharded.glob("model-*.safetensors")):
        torch.save(
            load_file(str(shard)),
            shard.with_name(shard.name.replace("model", "pytorch_model").replace(".safetensors", ".bin")),
        )
        shard.unlink()
    index["weight_map"] = {
        k: v.replace("model", "pytorch_model").replace(".safetensors", ".bin") for k, v in index["weight_map"].items()
    }
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (sharded / "model.safetensors.index.json").unlink()
    raises(sharded, LoadError, "pytorch_model", "--allow-pickle")
    assert attnscope.load_model(sharded, allow_pickle=True).config.num_hidden_layers == 2


def pickled(path: Path, state, **save) -> Path:
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin", **save)
    return path


@pytest.mark.parametrize(("protocol", "fragment"), [(2, "GLOBAL posix.system"), (4, "Unsupported operand")])
def test_pickle_error_is_one_line_without_torch_advice_or_warnings(model_copy, protocol, fragment):
    # protocol 4 makes torch warn ("Detected pickle protocol 4") before it refuses the file
    state = {"model.norm.weight": torch.ones(64), "evil": os.system}
    path = pickled(model_copy(), state, pickle_protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = raises(path, LoadError, "pytorch_model.bin", "weights_only", fragment, allow_pickle=True)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    assert "PyTorch 2.6" not in msg and "file an issue" not in msg and "documentation" not in msg
    result = cli_run(path, "x", "--allow-pickle")
    assert_user_error(result, "weights_only", fragment)
    assert "Warning" not in result.stderr


@pytest.mark.parametrize(("content", "fragment"), [(b"", "empty or truncated"), (b"garbage" * 4, "Unsupported")])
def test_unreadable_pickle(model_copy, content, fragment):
    path = model_copy()
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(content)
    raises(path, LoadError, "pytorch_model.bin", fragment, allow_pickle=True)


@pytest.mark.parametrize(
    ("state", "fragment"),
    [([torch.ones(2)], "dict of tensors"), ({"model.norm.weight": 5}, "'model.norm.weight' is not a tensor")],
)
def test_pickle_that_is_not_a_state_dict(model_copy, state, fragment):
    raises(pickled(model_copy(), state), LoadError, fragment, allow_pickle=True)


# --- tokenizer files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('["<s>"]', ["tokenizer_config.json", "JSON object", "list"]),
        ('{"bos_token": 7, "add_bos_token": true}', ["bos_token must be a string", "7"]),
        ('{"bos_token": {"content": ["w1"]}}', ["bos_token must be a string", "['w1']"]),
        ('{"bos_token": "w7", "add_bos_token": "yes"}', ["add_bos_token", "'yes'"]),
        ('{"bos_token": "<s>", "add_bos_token": true}', ["add_bos_token is true", "'<s>'"]),
        ('{"add_bos_token": true}', ["add_bos_token is true", "no bos_token"]),
    ],
)
def test_bad_tokenizer_config(model_copy, content, fragments):
    path = model_copy()
    write_word_tokenizer(path, 50)
    (path / "tokenizer_config.json").write_text(content)
    raises(path, LoadError, *fragments)


def test_tokenizer_config_not_utf8(model_copy):
    path = model_copy()
    write_word_tokenizer(path, 50)
    (path / "tokenizer_config.json").write_bytes(b'{"bos_token": "\xe9"}')
    raises(path, LoadError, "tokenizer_config.json", "not UTF-8")


def write_tokenizer_without_unk(path: Path, kind: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2, " ": 3}, merges=[("a", "b")]))
    tok.save(str(path / "tokenizer.json"))


@pytest.mark.parametrize(
    ("kind", "prompt", "fragment"),
    [("wordlevel", "w1 zz w2", "Missing [UNK]"), ("bpe", "ab xab", "cannot encode 'x' (character 3")],
)
def test_tokenizer_that_cannot_encode_the_prompt(model_copy, kind, prompt, fragment):
    path = model_copy()
    write_tokenizer_without_unk(path, kind)
    scope = attnscope.Scope(attnscope.load_model(path))
    with pytest.raises(LoadError) as info:
        scope.run(prompt)
    assert "tokenizer.json" in str(info.value) and fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert scope.model.tokenizer.encode("ab ab" if kind == "bpe" else "w1 w2")  # what it knows still encodes
    assert_user_error(cli_run(path, prompt), "cannot encode")


def test_tokenizer_keeps_what_the_normalizer_removes(model_copy):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    path = model_copy()
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1}))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    assert attnscope.load_model(path).tokenizer.encode("a\u0301 b") == [0, 1]


# --- random config.json dicts: a UserError or a model, within a fixed memory budget ---------------

BUDGET = 16 << 20  # bytes the size check lets a random config have

ints = st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 4, 8, 16, 32, 64, 100, 128, 10**6, 2**31, 2**63, 10**30])
weird = st.one_of(
    st.booleans(),
    st.none(),
    ints,
    st.sampled_from([0.0, -1.0, 1e-6, 0.5, 64.0, 1e308, math.nan, math.inf, -math.inf]),
    st.sampled_from(["", "4", "silu", "llama", "full_attention", "nan"]),
    st.lists(ints, max_size=3),
    st.dictionaries(st.sampled_from(["rope_type", "type", "factor", "rope_theta"]), ints, max_size=2),
)
rope = st.fixed_dictionaries(
    {"rope_type": st.sampled_from(["default", "linear", "llama3", "yarn", 3, None])},
    optional={
        key: st.one_of(st.sampled_from([1.0, 4.0, 8.0, 64, 0, -2.0, math.nan, "2"]), weird)
        for key in (
            "rope_theta",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
            "partial_rotary_factor",
        )
    },
)
KEYS = {
    "model_type": st.sampled_from(["llama", "mistral", "qwen2", "qwen3", "gpt2", 7]),
    "vocab_size": ints,
    "hidden_size": ints,
    "intermediate_size": ints,
    "num_hidden_layers": ints,
    "num_attention_heads": ints,
    "num_key_value_heads": ints,
    "head_dim": ints,
    "max_position_embeddings": ints,
    "sliding_window": ints,
    "max_window_layers": ints,
    "bos_token_id": ints,
    "eos_token_id": st.one_of(ints, st.lists(ints, max_size=3)),
    "rms_norm_eps": weird,
    "rope_theta": weird,
    "hidden_act": weird,
    "attention_bias": weird,
    "mlp_bias": weird,
    "tie_word_embeddings": weird,
    "use_sliding_window": weird,
    "partial_rotary_factor": weird,
    "rope_parameters": st.one_of(rope, weird),
    "rope_scaling": st.one_of(rope, weird),
    "layer_types": st.one_of(
        st.lists(st.sampled_from(["full_attention", "sliding_attention", "x"]), max_size=3), weird
    ),
}
BASE = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@st.composite
def configs(draw):
    """The test model's config with one to six keys replaced by anything (or, one time in ten, removed)."""
    cfg = dict(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=6, unique=True)):
        if draw(st.integers(0, 9)):
            cfg[key] = draw(KEYS[key])
        else:
            cfg.pop(key, None)
    return cfg


@pytest.fixture(scope="module")
def random_model_dir(zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("random-config") / "model"
    shutil.copytree(zoo["llama-gqa"].path, path)
    return path


@pytest.fixture
def budget(monkeypatch):
    """Available memory is BUDGET; returns the sizes of the models built (a list that grows) and
    checks on the way out that the process's peak memory grew by less than PEAK_GROWTH."""
    import resource

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": BUDGET)
    built: list[int] = []
    real_init = Transformer.__init__

    def counting_init(self, config, *args, **kwargs):
        built.append(memory.model_bytes(config, torch.float32))
        real_init(self, config, *args, **kwargs)

    monkeypatch.setattr(Transformer, "__init__", counting_init)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    yield built
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak < PEAK_GROWTH


PEAK_GROWTH = 256 << 20


@pytest.mark.skipif(sys.platform != "linux", reason="measures the peak memory with getrusage (Linux units)")
@pytest.mark.parametrize("engine", ["native", "hf"])
@settings(
    max_examples=50,
    deadline=10000,
    derandomize=True,  # the same examples on every machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cfg=configs())
@example(cfg={**BASE, "sliding_window": -(1 << 63)})  # the hf engine once built its mask from this
@example(
    cfg={**BASE, "model_type": "llama4_text", "layer_types": ["chunked_attention"] * 2, "attention_chunk_size": 0.5}
)
def test_random_config_loads_or_raises_a_user_error(random_model_dir, budget, engine, cfg):
    """Through our loader and through transformers alike: a model, or one line, never a traceback,
    and never more memory than the budget (sizes are checked before anything is built)."""
    if engine == "hf":
        pytest.importorskip("transformers")
    (random_model_dir / "config.json").write_text(json.dumps(cfg))
    try:
        model = attnscope.load_model(random_model_dir, engine=engine)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert model.layout.n_layers >= 1
    # nothing beyond the budget was ever built, whatever config.json said
    assert all(size <= BUDGET for size in budget), budget


def test_random_configs_reach_the_model(random_model_dir, monkeypatch):
    """The strategy's base config is a valid one: the test above exercises loading, not only parsing."""
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": BUDGET)
    (random_model_dir / "config.json").write_text(json.dumps(BASE))
    assert attnscope.load_model(random_model_dir, engine="native").config.num_key_value_heads == 2


def test_huge_configs_never_reach_the_model_builder():
    config = ModelConfig.from_hf({**BASE, "num_hidden_layers": MAX_LAYERS, "hidden_size": 2**31})
    with pytest.raises(ConfigError, match="memory available"):
        memory.require_model_fits(config, torch.float16)


def test_a_kv_cache_that_cannot_fit_is_refused_before_it_is_allocated():
    """The native engine checks the cache's size in `new_cache`: a run asking for 10^10 new tokens on a
    config that allows them fails at once with the numbers, not after allocating terabytes."""
    from support.models import random_model

    model = random_model(layers=2, vocab=96, hidden=64, max_positions=10**12)
    with pytest.raises(UserError, match=r"KV cache of 1 × 10,000,000,004 positions needs .*TiB"):
        attnscope.Scope(model).run([1, 2, 3, 4], max_new_tokens=10**10)


# ---- limits the memory check reads ---------------------------------------------------------------------


def test_an_address_space_limit_is_memory_not_available():
    """``ulimit -v``: what RLIMIT_AS leaves beside what the process maps is all that is available, and a
    model larger than that is refused with one line, not a failed allocation."""
    code = """
import resource
from attnscope.model.memory import available_memory, _address_space_left
mapped = _address_space_left()
assert mapped is None
import os
statm = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (statm + (256 << 20), resource.RLIM_INFINITY))
free = available_memory("cpu")
assert free is not None and free <= 256 << 20, free
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_an_address_space_limit_refuses_a_large_model_through_the_cli(model_copy):
    import resource

    path = model_copy()
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(
        json.dumps({**config, "hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 8})
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, "-m", "attnscope", "run", "-m", str(path), "-p", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert proc.returncode == 2 and "memory available" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ---- the hf engine keeps the native engine's rules ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_integer_and_bool_tensors_are_refused_by_the_hf_engine(model_copy, dtype):
    pytest.importorskip("transformers")
    path = model_copy()
    edit_tensors(path, lambda t: t.__setitem__("model.norm.weight", torch.ones(64, dtype=dtype)))
    raises(path, LoadError, "'model.norm.weight'", "floating-point", engine="hf")


def test_a_config_with_fewer_layers_than_the_weights_is_refused_by_the_hf_engine(model_copy):
    pytest.importorskip("transformers")
    path = model_copy()
    edit_config(path, num_hidden_layers=1)
    raises(path, LoadError, "describes 1 layers but the weights hold 2", engine="hf")


def test_a_model_that_needs_remote_code_is_refused_without_advice(model_copy):
    pytest.importorskip("transformers")
    path = model_copy()
    edit_config(path, model_type="acme", auto_map={"AutoConfig": "acme.Config", "AutoModelForCausalLM": "acme.Model"})
    message = raises(path, LoadError, "code of its own", "never runs", engine="hf")
    assert "trust_remote_code" not in message


@pytest.mark.parametrize("where", ["refs-main-dotdot", "snapshot-link-outside"])
def test_a_hub_cache_snapshot_must_lie_inside_the_cache(zoo, tmp_path, monkeypatch, where):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(zoo["llama-gqa"].path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    outside = tmp_path / "elsewhere"
    shutil.copytree(zoo["llama-gqa"].path, outside)
    if where == "refs-main-dotdot":  # snapshots/../../.. is the cache's parent: a model directory there
        shutil.copytree(zoo["llama-gqa"].path, tmp_path, dirs_exist_ok=True)
        (repo / "refs" / "main").write_text("../../..")
    else:
        (snapshot / "model.safetensors").unlink()
        (snapshot / "model.safetensors").symlink_to(outside / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(LoadError) as info:
        attnscope.load_model("acme/tiny")
    assert ("not a snapshot in" if where == "refs-main-dotdot" else "outside the cache") in str(info.value)
