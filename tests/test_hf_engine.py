"""The hf engine: transformers causal LMs of eight architectures watched through the AttentionInterface.

References we did not write: each model's own forward (logits) and transformers' eager attention with
``output_attentions`` (every probability of every layer and head). Each check is shown to fire on a
fault injected through the hf engine (a NaN weight, a cache that loses a token, a leaking mask), and
the native and hf engines agree on the four native architectures.
"""

from __future__ import annotations

import json

import pytest
import torch
from support.models import ARCHITECTURES, PARITY_MODELS, build_architecture, random_ids
from test_cli import assert_user_error
from typer.testing import CliRunner

import attnscope
from attnscope import hf
from attnscope.cli import app
from attnscope.errors import UnsupportedFeature, UserError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")

T = 40  # tokens: five times the sliding window


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_architecture(name)
        return cache[name]

    return get


def ids(length: int = T) -> list[int]:
    return (random_ids(length, 100, seed=1)[0] % 97 + 3).tolist()  # no pad/bos/eos ids


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_matches_the_model_and_transformers_eager_attention(models, name):
    model = models(name)
    tokens = ids()
    with torch.no_grad():
        ref = model(torch.tensor([tokens]), output_attentions=True, use_cache=False)
    result = attnscope.Scope(attnscope.from_transformers(model), backend="eager").run(
        tokens, checks="all", max_new_tokens=3
    )
    assert model.config._attn_implementation == "eager"  # switched back after every forward
    torch.testing.assert_close(result.logits, ref.logits[0], atol=1e-4, rtol=0)
    for layer in range(model.config.num_hidden_layers):
        for head in range(model.config.num_attention_heads):
            torch.testing.assert_close(result.attention(layer, head), ref.attentions[layer][0, head], atol=1e-5, rtol=0)
    failed = [(c.name, c.message) for c in result.checks if not c.passed]
    assert not failed and len(result.checks) == 5
    # attention is far from uniform, so the comparison above could tell a wrong mask or scale
    stats = result.head_stats()
    assert max(s.max_weight for layer in stats for s in layer) > 3 / T


def test_layer_masks_follow_the_model(models):
    engine = attnscope.from_transformers(models("gemma2"))
    attnscope.Scope(engine).run(ids(12), checks="none")
    assert [repr(m) for m in engine.layer_masks()] == ["causal & sliding_window(8)", "causal"]
    report = attnscope.Scope(engine).run(ids(12), checks="none").report().to_dict()
    assert [layer["mask"] for layer in report["layers"]] == ["causal & sliding_window(8)", "causal"]
    assert report["model"]["engine"] == "hf"


@pytest.mark.parametrize("name", ["llama", "gpt_oss", "gemma3_text"])
def test_sdpa_backend_through_the_hf_engine(models, name):
    result = attnscope.Scope(attnscope.from_transformers(models(name)), backend="sdpa").run(
        ids(), checks="backend_vs_reference,full_vs_incremental,causality"
    )
    assert all(c.passed for c in result.checks), [c.message for c in result.checks]


def test_a_backend_without_softcapping_is_refused_naming_the_feature(models):
    with pytest.raises(
        UnsupportedFeature,
        match="gemma2 layer 0 uses attention logit soft-capping, which backend 'sdpa' does not implement",
    ):
        attnscope.Scope(attnscope.from_transformers(models("gemma2")), backend="sdpa").run(ids(8), checks="none")


def test_padded_batch_rows_compute_what_they_would_alone(models):
    engine = attnscope.from_transformers(models("gemma3_text"))
    rows = [ids(20), ids(11)]
    scope = attnscope.Scope(engine)
    for side in ("left", "right"):
        batch = scope.run(rows, checks="all", padding_side=side, max_new_tokens=2)
        assert all(c.passed for c in batch.checks), [c.message for c in batch.checks]
        alone = scope.run(rows[1], checks="none")
        real = batch.logits[1][-11:] if side == "left" else batch.logits[1][:11]
        torch.testing.assert_close(real, alone.logits, atol=1e-4, rtol=0)


# --- each check fires on a fault injected through the hf engine --------------------------------------------


def test_nan_weight_is_found_at_its_layer():
    model = build_architecture("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    result = attnscope.Scope(attnscope.from_transformers(model)).run(ids(), checks="nan")
    check = result.checks[0]
    assert not check.passed and (check.where["layer"], check.where["stage"], check.where["kv_head"]) == (1, "k", 0)


def test_a_cache_that_loses_a_token_is_found_at_its_layer(models, monkeypatch):
    from transformers import DynamicCache

    class Forgetful(DynamicCache):
        """Layer 1 never stores position 12's key (a missed cache write of a decode step: the default
        incremental mode decodes positions 8-39 of the 40 one at a time)."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx == 1 and self.get_seq_length(1) == 12:
                key_states = torch.zeros_like(key_states)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    engine = attnscope.from_transformers(models("qwen3"))
    monkeypatch.setattr(engine, "new_cache", lambda batch, max_len: Forgetful())
    check = attnscope.Scope(engine).run(ids(), checks="full_vs_incremental", max_new_tokens=0).checks[0]
    assert not check.passed and check.where["layer"] == 1 and check.where["position"] >= 12


def test_a_leaking_mask_is_found_by_causality(models, monkeypatch):
    real_spec = hf._layer_spec

    def leaky(call, module, kwargs, attention_mask, Sq, Sk, where):
        spec = real_spec(call, module, kwargs, attention_mask, Sq, Sk, where)
        if where.endswith("layer 1"):
            return attnscope.masks.custom(torch.ones(Sq, Sk, dtype=torch.bool), name="leaky")
        return spec

    monkeypatch.setattr(hf, "_layer_spec", leaky)
    result = attnscope.Scope(attnscope.from_transformers(models("olmo2"))).run(ids(), checks="causality,masked_rows")
    causality, masked_rows = result.checks[0], result.checks[1]
    assert not causality.passed and causality.where["layer"] == 1
    assert masked_rows.passed


def test_a_model_mask_that_differs_from_the_spec_is_used_as_custom(models, monkeypatch):
    """Where the model's own mask tensor says something else than causal + window + padding, that
    tensor is what runs, and the report names it custom."""
    from transformers import masking_utils

    real = hf._bool_mask

    def window_of_three(*args, **kwargs):
        mask = real(*args, **kwargs)
        q = torch.arange(mask.shape[-2])[:, None] + (mask.shape[-1] - mask.shape[-2])
        k = torch.arange(mask.shape[-1])[None, :]
        return mask & (k > q - 3)

    engine = attnscope.from_transformers(models("llama"))  # registers attnscope's own mask function
    masking_utils.AttentionMaskInterface.register(hf.IMPLEMENTATION, window_of_three)
    try:
        result = attnscope.Scope(engine).run(ids(12), checks="masked_rows")
    finally:
        hf.register()
    assert all(layer["mask"].startswith("custom") for layer in result.report().to_dict()["layers"])
    weights = result.attention(0, 0)
    assert float(weights[11, :9].sum()) == 0 and abs(float(weights[11].sum()) - 1) < 1e-5


# --- native and hf engines agree on the native architectures ---------------------------------------------


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_native_and_hf_engines_agree(zoo, name):
    path = zoo[name].path
    native = attnscope.Scope(attnscope.load_model(path, engine="native")).run(
        zoo[name].ids()[0].tolist(), checks="none"
    )
    engine = attnscope.load_model(path, engine="hf")
    assert engine.engine == "hf"
    watched = attnscope.Scope(engine).run(zoo[name].ids()[0].tolist(), checks="none")
    torch.testing.assert_close(watched.logits, native.logits, atol=1e-4, rtol=0)
    layout = engine.layout
    for layer in range(layout.n_layers):
        for head in range(layout.n_heads):
            torch.testing.assert_close(watched.attention(layer, head), native.attention(layer, head), atol=1e-5, rtol=0)
    assert [repr(m) for m in engine.layer_masks()] == [repr(m) for m in native.run.model.layer_masks()]


# --- loading: directories, --engine, the Hub cache, device_map ------------------------------------------------


@pytest.fixture(scope="module")
def gemma2_dir(models, tmp_path_factory):
    from test_loader import write_word_tokenizer

    path = tmp_path_factory.mktemp("hf") / "gemma2"
    models("gemma2").save_pretrained(path)
    write_word_tokenizer(path, 90)
    return path


def test_auto_engine_runs_other_architectures_through_hf(gemma2_dir, tmp_path):
    model = attnscope.load_model(gemma2_dir)
    assert model.engine == "hf" and model.layout.model_type == "gemma2"
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["check", "-m", str(gemma2_dir), "-p", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "-b", "eager", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["model"]["engine"] == "hf" and report["model"]["model_type"] == "gemma2"


def test_engine_option_errors(gemma2_dir):
    runner = CliRunner()
    assert_user_error(
        runner.invoke(app, ["run", "-m", str(gemma2_dir), "-p", "w1", "--engine", "native"]),
        "unsupported model_type 'gemma2'",
    )
    assert_user_error(
        runner.invoke(app, ["run", "-m", str(gemma2_dir), "-p", "w1", "--engine", "jax"]), "unknown engine 'jax'"
    )
    assert_user_error(
        runner.invoke(app, ["run", "-m", str(gemma2_dir), "-p", "w1 w2", "-b", "sdpa"]),
        "gemma2 layer 0 uses attention logit soft-capping",
        "backend 'auto' chooses one that does",
    )


def test_missing_weights_are_refused(gemma2_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "partial"
    shutil.copytree(gemma2_dir, path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="the weights lack 1 of the model's tensors"):
        attnscope.load_model(path)
    extra = tmp_path / "extra"
    shutil.copytree(gemma2_dir, extra)
    tensors = load_file(extra / "model.safetensors")
    tensors["model.adapter.weight"] = torch.zeros(4, 4)  # a tensor no module of gemma2 reads
    save_file(tensors, str(extra / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="the weights hold 1 tensors .* \\(first: model.adapter.weight\\)"):
        attnscope.load_model(extra)
    config = json.loads((gemma2_dir / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1000000, "layer_types": None}))
    with pytest.raises(UserError, match="describes 1,000,000 layers but the weights hold 2"):
        attnscope.load_model(path)


def test_hub_ids_resolve_through_the_local_cache_only(gemma2_dir, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-gemma" / "snapshots" / "0123abcd"
    shutil.copytree(gemma2_dir, snapshot)
    (cache / "models--acme--tiny-gemma" / "refs").mkdir()
    (cache / "models--acme--tiny-gemma" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    model = attnscope.load_model("acme/tiny-gemma")
    assert model.path == snapshot and model.layout.model_type == "gemma2"
    assert_user_error(
        CliRunner().invoke(app, ["run", "-m", "acme/missing", "-p", "w1"]),
        "'acme/missing' is not in the local Hugging Face cache",
        "hf download acme/missing",
    )


def test_device_map_that_splits_layers(gemma2_dir, tmp_path):
    """Layer 1 offloaded to disk by accelerate's hooks (weights brought in for each call): the same
    attention function runs on each piece, and the results equal the undispatched model's."""
    pytest.importorskip("accelerate")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    dispatched = transformers.AutoModelForCausalLM.from_pretrained(
        gemma2_dir, device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    assert hasattr(dispatched.model.layers[1], "_hf_hook")
    tokens = ids(16)
    split = attnscope.Scope(attnscope.from_transformers(dispatched)).run(tokens, checks="all", max_new_tokens=2)
    whole = attnscope.Scope(attnscope.load_model(gemma2_dir)).run(tokens, checks="none", max_new_tokens=2)
    assert all(c.passed for c in split.checks), [c.message for c in split.checks]
    torch.testing.assert_close(split.logits, whole.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(split.attention(1, 2), whole.attention(1, 2), atol=1e-6, rtol=0)


def test_from_transformers_refuses_what_it_cannot_watch(models):
    with pytest.raises(UserError, match="expected a transformers PreTrainedModel"):
        attnscope.from_transformers(torch.nn.Linear(2, 2))
    model = build_architecture("llama").train()
    with pytest.raises(UserError, match="training mode"):
        attnscope.Scope(attnscope.from_transformers(model)).run(ids(4), checks="none")


def test_without_transformers_the_hf_engine_is_one_line(gemma2_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of it raises ImportError
    assert_user_error(
        CliRunner().invoke(app, ["run", "-m", str(gemma2_dir), "-p", "w1"]),
        'the hf engine needs transformers: pip install "attnscope[hf]"',
    )
    assert attnscope.load_model("tiny-code").engine == "native"  # the native engine never needs it


def test_tui_names_the_soft_capped_score_of_a_cell(gemma2_dir):
    """Gemma 2 caps its attention logits: the details panel gives the score that entered the
    softmax under its real formula, c·tanh(q·k·scale / c), not as a plain q·k·scale."""
    import asyncio

    from test_tui import finished, wait_for

    from attnscope.tui.app import AttnScopeApp
    from attnscope.tui.heatmap_view import HeatmapView

    async def scenario():
        app = AttnScopeApp(model=str(gemma2_dir), prompt="w1 w2 w3 w4 w5 w6", backend="eager")
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, finished(app))
            view = app.query_one(HeatmapView)
            view.focus()
            await pilot.press("down", "down", "right")
            await wait_for(pilot, lambda: "scaled score" in app.query_one("#details").info)
            rec = app.result.records[view.layer_idx]
            cap = rec.softcap
            assert cap is not None
            info = app.query_one("#details").info
            assert f"scaled score {cap:g}·tanh(q·k·scale / {cap:g}) {rec.score(view.head_idx, 2, 1):+.4f}" in info

    asyncio.run(scenario())


def test_learned_sink_share_is_what_transformers_leaves_off_the_keys(models):
    """gpt-oss's sink logit joins each row's softmax and its weight is dropped: transformers' eager
    probabilities over the keys sum to 1 − the sink's share. The report gives that share per head
    (mean over rows), the per-head table shows it, and a model without sinks has none."""
    from rich.console import Console

    from attnscope.render.tables import head_table

    model = models("gpt_oss")
    tokens = ids()
    with torch.no_grad():
        ref = model(torch.tensor([tokens]), output_attentions=True, use_cache=False)
    report = attnscope.Scope(attnscope.from_transformers(model), backend="eager").run(tokens, checks="none").report()
    for layer in report.layers:
        want = (1 - ref.attentions[layer.index][0].sum(-1)).mean(-1)  # (Hq,) mean over the rows
        got = torch.tensor([h.sink_share for h in layer.heads])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert max(h.sink_share for layer in report.layers for h in layer.heads) > 0.05  # sinks that matter
    console = Console(width=200, record=True)
    console.print(head_table(report))
    assert "s_aux" in console.export_text()
    plain = attnscope.Scope(attnscope.from_transformers(models("llama"))).run(ids(8), checks="none").report()
    assert all(h.sink_share is None for layer in plain.layers for h in layer.heads)
    assert "sink_share" in plain.to_dict()["layers"][0]["heads"][0]
