"""Every check is shown to fail: faults are injected (an off-by-one causal backend, a KV cache that
drops a token, NaN in one layer's k projection, a mask that lets one future token through, a wrong
lse, a row with no key, float16 overflow) and the right check must name the right layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.models import random_model

import attnscope
from attnscope import masks
from attnscope.backends import register_backend
from attnscope.backends.eager import attend as eager_attend
from attnscope.errors import UserError
from attnscope.inspector import capture
from attnscope.inspector.checks import CHECK_NAMES
from attnscope.model import KVCache
from attnscope.model.native import LoadedModel
from attnscope.testing import assert_backend_matches, assert_causal, assert_incremental_matches_full, assert_no_nan

PROMPT = [(7 * i + 3) % 90 + 1 for i in range(20)]  # 20 tokens: causality cuts at 5, 10, 15
MODEL_ARGS = dict(layers=4, vocab=96, hidden=64, max_positions=128)  # D = 16, GQA 4/2


def run(model, backend="eager", checks="all", prompt=PROMPT, **kw):
    result = attnscope.Scope(model, backend=backend).run(prompt, checks=checks, **kw)
    return {c.name: c for c in result.checks}, result


class OffByOne(masks.MaskSpec):
    """The classic kernel bug: query p also sees key p + 1."""

    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + 1

    def __repr__(self):
        return "causal+1"


def off_by_one_attend(q, k, v, mask, scale, *, need_lse=True):
    return eager_attend(q, k, v, OffByOne(), scale, need_lse=need_lse)


def wrong_lse_attend(q, k, v, mask, scale, *, need_lse=True):
    out, lse = eager_attend(q, k, v, mask, scale)
    return out, lse + 0.1


register_backend("test-off-by-one", off_by_one_attend)
register_backend("test-wrong-lse", wrong_lse_attend)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_a_correct_model_passes_every_check(backend):
    found, result = run(random_model(**MODEL_ARGS), backend)
    assert set(found) == set(CHECK_NAMES)
    assert all(c.passed for c in found.values()), {n: c.message for n, c in found.items()}
    assert found["causality"].figures["bit_exact"] is (backend == "eager")
    assert result.report().passed


def test_padded_batch_passes_every_check():
    result = attnscope.Scope(random_model(**MODEL_ARGS), backend="sdpa").run([PROMPT, PROMPT[:9]], checks="all")
    assert all(c.passed for c in result.checks), [c.message for c in result.checks]
    masked = next(c for c in result.checks if c.name == "masked_rows")
    assert masked.figures["padding_rows_fully_masked"] > 0  # left padding rows, reported, not failed


def test_flex_passes_every_check_on_a_padded_batch():
    """The check suite treats flex like any backend (a smaller model: its CPU path is the eager,
    unfused flex_attention, ~50 ms a call)."""
    model = random_model(**{**MODEL_ARGS, "layers": 2})
    result = attnscope.Scope(model, backend="flex").run([PROMPT[:12], PROMPT[:7]], checks="all")
    assert [c.name for c in result.checks] == list(CHECK_NAMES)
    assert all(c.passed for c in result.checks), [c.message for c in result.checks]
    assert result.report().lse_source == "flex_attention"


def test_off_by_one_causal_backend_is_caught_at_layer_0():
    found, _ = run(random_model(**MODEL_ARGS), "test-off-by-one")
    for name in ("causality", "backend_vs_reference", "full_vs_incremental"):
        assert not found[name].passed, name
        assert found[name].where["layer"] == 0, (name, found[name].where)
    assert found["causality"].where["position"] == found["causality"].where["cut"]  # p sees p + 1
    assert found["nan"].passed


class DroppingCache(KVCache):
    """Layer 2 loses the key and value of position 1 once three tokens are cached."""

    def update(self, layer, k, v):
        k_all, v_all = super().update(layer, k, v)
        if layer == 2 and self.length >= 3:
            keep = [i for i in range(k_all.shape[2]) if i != 1]
            return k_all[:, :, keep], v_all[:, :, keep]
        return k_all, v_all


def test_kv_cache_that_drops_a_token_is_caught_at_its_layer(monkeypatch):
    model = random_model(**MODEL_ARGS)
    net = model.net
    monkeypatch.setattr(
        net, "new_cache", lambda batch, max_len: DroppingCache(net.config, batch, max_len, torch.float32, "cpu")
    )
    found, _ = run(model)
    check = found["full_vs_incremental"]
    assert not check.passed
    assert check.where["layer"] == 2 and check.where["position"] == 3
    per_layer = check.figures["per_layer_max_abs_diff"]
    assert max(per_layer[:2]) < 1e-4 < per_layer[2]
    assert found["causality"].passed and found["backend_vs_reference"].passed and found["nan"].passed


def test_nan_in_k_projection_is_localized():
    model = random_model(**MODEL_ARGS)
    with torch.no_grad():
        model.net.layers[1].self_attn.k_proj.weight[16 + 3, 5] = float("nan")  # kv head 1 (head_dim 16)
    found, result = run(model, "sdpa")
    check = found["nan"]
    assert not check.passed
    assert check.where == {
        "layer": 1,
        "stage": "k",
        "head": 2,
        "kv_head": 1,
        "query_heads": [2, 3],
        "position": 0,
        "batch": 0,
        "tensors": ["k"],
    }
    counts = check.figures["nonfinite_counts"]
    assert counts["k"] > 0 and counts["scores"] > 0
    with pytest.raises(AssertionError, match=r"layer 1, k of kv head 1 \(read by query heads 2–3\), position 0"):
        assert_no_nan(result)
    layer1 = result.report().layers[1].heads
    assert layer1[0].nonfinite == 0 and layer1[2].nonfinite > 0  # only kv head 1's query heads


def test_statistics_of_a_nan_head_are_nan_not_zero():
    """A head whose weights are NaN has an unknown entropy, not 0.00 (which read as the sharpest head)."""
    import io

    from rich.console import Console

    from attnscope.render.tables import head_table, layer_table

    model = random_model(**MODEL_ARGS)
    with torch.no_grad():
        model.net.layers[1].self_attn.k_proj.weight[16 + 3, 5] = float("nan")  # kv head 1: query heads 2, 3
    report = attnscope.Scope(model).run(PROMPT, checks="nan").report()
    heads = report.layers[1].heads
    assert isinstance(heads[0].entropy, float) and heads[0].entropy > 0
    assert heads[2].entropy == heads[2].max_weight == heads[2].first_token_mass == "nan"
    assert json.loads(report.to_json())["layers"][1]["heads"][3]["entropy"] == "nan"  # a string: valid JSON

    def rows(table, layer: int) -> list[list[str]]:
        console = Console(file=io.StringIO(), width=200, color_system=None)
        console.print(table)
        lines = console.file.getvalue().splitlines()
        start = next(n for n, line in enumerate(lines) if line.split()[:1] == [str(layer)])
        return [line.split() for line in lines[start : start + 3]]

    entropy = rows(head_table(report), 1)[0]  # layer, "entropy", then one value per head
    assert entropy[2:4] != ["nan", "nan"] and entropy[4:6] == ["nan", "nan"]
    layer = rows(layer_table(report), 1)[0]  # layer, mask, entropy range, sink, max w, NaN count, ...
    assert layer[2:5] == ["nan", "nan", "nan"] and int(layer[5]) > 0  # aggregates over a NaN head are NaN
    assert rows(layer_table(report), 0)[0][2] != "nan"


def test_mask_that_leaks_one_future_token_names_the_layer():
    model = random_model(**MODEL_ARGS)
    leak = torch.ones(20, 20, dtype=torch.bool).tril()
    leak[5, 6] = True  # position 5 sees position 6
    model.net.layers[1].self_attn.mask = masks.custom(leak, "causal+leak(5→6)")
    found, _ = run(model)
    check = found["causality"]
    assert not check.passed
    assert check.where["layer"] == 1 and check.where["position"] == 5 and check.where["cut"] == 5
    assert found["full_vs_incremental"].where["layer"] == 1
    with pytest.raises(AssertionError, match="from layer 1 on"):
        assert_causal(model, PROMPT)


def test_wrong_lse_makes_weights_not_sum_to_one():
    found, _ = run(random_model(**MODEL_ARGS), "test-wrong-lse", checks=("masked_rows",))
    check = found["masked_rows"]
    assert not check.passed and check.where["layer"] == 0
    assert check.figures["max_weight_sum_error"] == pytest.approx(1 - torch.exp(torch.tensor(-0.1)).item(), abs=1e-4)


def test_row_with_no_key_is_reported():
    model = random_model(**MODEL_ARGS)
    blocked = torch.ones(20, 20, dtype=torch.bool).tril()
    blocked[3] = False
    model.net.layers[2].self_attn.mask = masks.custom(blocked, "causal-without-row-3")
    found, result = run(model, "sdpa", checks=("masked_rows", "nan"))
    check = found["masked_rows"]
    assert not check.passed
    assert check.where["layer"] == 2 and check.where["position"] == 3
    assert found["nan"].passed  # out 0 and lse -inf, never NaN
    assert result.report().layers[2].heads[0].fully_masked_rows == 1


def test_float16_overflow_is_localized_to_its_layer():
    model = random_model(**MODEL_ARGS)
    with torch.no_grad():
        model.net.layers[2].post_attention_layernorm.weight.fill_(3e3)
    found32, _ = run(model, checks=("nan",))
    assert found32["nan"].passed
    model16 = LoadedModel(model.net.to(torch.float16), None, "random", Path("."))
    found16, _ = run(model16, checks=("nan",))
    check = found16["nan"]
    assert not check.passed
    assert check.where["layer"] == 2 and check.where["stage"] == "residual"


def test_tolerance_overrides_and_testing_helpers():
    model = random_model(**MODEL_ARGS)
    assert_incremental_matches_full(model, PROMPT, backend="sdpa")
    assert_backend_matches(model, PROMPT, "sdpa")
    with pytest.raises(AssertionError, match="test-off-by-one differs from eager at layer 0"):
        assert_backend_matches(model, PROMPT, "test-off-by-one")
    found, _ = run(model, "test-off-by-one", checks=("backend_vs_reference",), atol=100.0, rtol=0.0)
    assert found["backend_vs_reference"].passed  # a huge tolerance accepts anything
    assert found["backend_vs_reference"].figures["tolerance"]["atol"] == 100.0


def test_pooled_maps_match_the_dense_probabilities():
    _, result = run(random_model(**MODEL_ARGS), "sdpa", checks=())
    dense = result.attention(1, 3).numpy()
    pooled = result.attention_pooled(1, 3, height=5, width=4, reduce="max")
    assert pooled.shape == (5, 4)
    assert abs(pooled - dense.reshape(5, 4, 4, 5).max(axis=(1, 3))).max() < 1e-6
    mean = result.attention_pooled(1, 3, height=5, width=4, reduce="mean")
    assert abs(mean - dense.reshape(5, 4, 4, 5).mean(axis=(1, 3))).max() < 1e-6
    region = result.attention_pooled(1, 3, height=100, width=100, queries=slice(4, 12), keys=slice(0, 8))
    assert abs(region - dense[4:12, 0:8]).max() < 1e-6
    group = result.attention_group(1, kv_head=1)
    assert group.shape == (2, 20, 20) and torch.allclose(group[1], result.attention(1, 3))


def test_regions_outside_the_prompt_are_an_error():
    """An empty view would hide a wrong slice: regions must lie inside the 20-token prompt."""
    _, result = run(random_model(**MODEL_ARGS), "sdpa", checks=())
    assert result.attention(1, 3, queries=slice(4, 8), keys=slice(0, 20)).shape == (4, 20)
    for region in (
        dict(queries=slice(100, 120)),
        dict(keys=slice(0, 21)),
        dict(queries=slice(5, 5)),
        dict(queries=slice(0, 8, 2)),
    ):
        with pytest.raises(UserError, match="slice"):
            result.attention(1, 3, **region)
        with pytest.raises(UserError, match="slice"):
            result.attention_pooled(1, 3, 4, 4, **region)
    with pytest.raises(UserError, match="batch row 1"):
        result.attention(1, 3, batch=1)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("nan", ("nan",)),
        ("nan,causality", ("nan", "causality")),
        (" nan , masked_rows ", ("nan", "masked_rows")),
        ("none", ()),
        (None, ()),
        ((), ()),
        ("all", CHECK_NAMES),
        (["causality"], ("causality",)),
    ],
)
def test_checks_are_selected_as_the_cli_selects_them(spec, names):
    found, _ = run(random_model(**MODEL_ARGS), "eager", checks=spec)
    assert tuple(found) == names


def test_an_unknown_check_is_refused_before_any_work():
    with pytest.raises(UserError, match="unknown check 'nope'"):
        run(random_model(**MODEL_ARGS), "eager", checks="nan,nope")


def test_the_most_focused_head_ignores_heads_with_non_finite_values():
    from attnscope.inspector.report import pick_head

    model = random_model(**MODEL_ARGS)
    report = attnscope.Scope(model).run(PROMPT).report()
    layer, head, why = pick_head(report)
    assert why and report.layers[layer].heads[head].focus == max(h.focus for lr in report.layers for h in lr.heads)
    report.layers[layer].heads[head].nonfinite = 3  # that head now has NaN/Inf: never "most focused"
    assert pick_head(report)[:2] != (layer, head)
    assert pick_head(report, layer, head) == (layer, head, "")  # asked for explicitly, it is drawn


def test_pooled_maps_of_rows_without_keys_and_with_nan():
    """Max pooling takes the max of the log weights and exponentiates the cells: rows with no key
    must still give 0 (not NaN), and a NaN in the scores must still reach its cell."""
    from attnscope.backends import eager
    from attnscope.inspector.capture import LayerRecord

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4)
    spec = masks.causal() & masks.padding([5], "left", 8)  # rows 0-2 are padding: no key at all
    q[0, 1, 6, 2] = float("nan")
    out, lse = eager.attend(q, k, v, spec, 0.5)
    record = LayerRecord(0, q, k, v, out, lse, spec, 0.5)
    for head in (0, 1):
        dense = record.probabilities(head).numpy()
        for reduce, fold in (("max", np.max), ("mean", np.mean)):
            pooled = record.pooled(head, 4, 4, reduce)
            np.testing.assert_allclose(pooled, fold(dense.reshape(4, 2, 4, 2), axis=(1, 3)), atol=1e-6, rtol=0)
        assert (dense[:3] == 0).all()
    assert not record.pooled(0, 4, 4, "max", queries=slice(3, 3)).any()  # an empty region has no weights
    assert not record.pooled(0, 4, 4, "mean", keys=slice(2, 2)).any()
    nan_row = record.pooled(1, 4, 4, "max")[3]  # rows 6-7: keys 0-2 are padding, the rest NaN
    assert nan_row[0] == 0 and np.isnan(nan_row[1:]).all() and not np.isnan(record.pooled(0, 4, 4, "max")).any()


# ---- the bundled broken variants of tiny-code ---------------------------------------------------


@pytest.mark.usefixtures("samples")  # broken/nan-k-proj and broken/fp16-overflow: missing, the test fails
def test_bundled_broken_models_are_localized_by_attnscope_check():
    from typer.testing import CliRunner

    from attnscope.cli import app

    runner = CliRunner()
    nan = runner.invoke(
        app, ["check", "-m", "broken/nan-k-proj", "-p", "def fibonacci(n):", "--checks", "nan", "--device", "cpu"]
    )
    assert nan.exit_code == 1 and "layer 2, k of kv head 1 (read by query heads 4–7), position 0" in nan.output
    fp16 = runner.invoke(
        app,
        [
            "check",
            "-m",
            "broken/fp16-overflow",
            "-p",
            "def fibonacci(n):",
            "--checks",
            "nan",
            "--dtype",
            "float16",
            "--device",
            "cpu",
        ],
    )
    assert fp16.exit_code == 1 and "layer 1, residual stream" in fp16.output
    fp32 = runner.invoke(
        app, ["check", "-m", "broken/fp16-overflow", "-p", "def fibonacci(n):", "--checks", "nan", "--device", "cpu"]
    )
    assert fp32.exit_code == 0, fp32.output


# ---- row statistics: one pass, against a float64 reference -------------------------------------------

STATS_MASKS = [
    masks.causal(),
    masks.causal() & masks.sliding_window(3),
    masks.prefix_lm(5),
    masks.causal() & masks.padding([14, 6], "left"),  # the padding rows of batch row 1 see no key
]


def dense_stats(q, k, lse, allowed, scale):
    """Each row's statistics from the float64 weights exp(q·k·scale - lse), 0 where masked."""
    groups = q.shape[1] // k.shape[1]
    kr = k.double().repeat_interleave(groups, dim=1)
    scores = (q.double() @ kr.transpose(-1, -2)) * scale
    lse = lse.double().masked_fill(lse == float("-inf"), 0.0).unsqueeze(-1)
    p = torch.where(allowed, torch.exp(scores - lse), torch.zeros((), dtype=torch.float64))
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros((), dtype=torch.float64))
    Sq, Sk = p.shape[-2:]
    query, key = torch.arange(Sq)[:, None] + Sk - Sq, torch.arange(Sk)  # absolute positions
    positional = (key == 0) | (key == query) | (key == query - 1)  # the first key, itself, the one before
    return {
        "focus": p.masked_fill(positional, 0).amax(-1),
        "entropy": -plogp.sum(-1),
        "max_weight": p.amax(-1),
        "argmax": p.argmax(-1),
        "first_token_mass": p[..., 0],
        "weight_sum": p.sum(-1),
        "fully_masked": ~allowed.any(-1),
    }


@pytest.mark.parametrize("spec", STATS_MASKS, ids=repr)
@pytest.mark.parametrize("chunk", [None, 2 * 8 * 14 * 3])  # one chunk, or 3 rows per chunk
@pytest.mark.parametrize("lse_shift", [0.0, 0.3])  # the backend's lse, right or off
def test_row_statistics_match_a_float64_reference(monkeypatch, spec, chunk, lse_shift):
    if chunk is not None:
        monkeypatch.setattr(capture, "STATS_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    B, Hq, Hkv, Sq, Sk, D = 2, 8, 2, 10, 14, 16
    q, k, v = (torch.randn(B, h, s, D, generator=gen) * 2 for h, s in ((Hq, Sq), (Hkv, Sk), (Hkv, Sk)))
    out, lse = eager_attend(q, k, v, spec, D**-0.5)
    lse = lse - lse_shift  # a wrong lse: weights sum to exp(shift), the statistics must show it
    stats = capture.LayerRecord(0, q, k, v, out, lse, spec, D**-0.5).stats
    want = dense_stats(q, k, lse, spec.dense(Sq, Sk).expand(B, Hq, Sq, Sk), D**-0.5)
    for name in ("entropy", "max_weight", "first_token_mass", "focus", "weight_sum"):
        torch.testing.assert_close(getattr(stats, name).double(), want[name], atol=2e-5, rtol=1e-5, msg=name)
    assert torch.equal(stats.fully_masked, want["fully_masked"])
    assert bool(want["fully_masked"].any()) == ("padding" in repr(spec))
    assert torch.equal(stats.argmax[~want["fully_masked"]], want["argmax"][~want["fully_masked"]])
    for name in ("nonfinite_scores", "nonfinite_weights", "nonfinite_output"):
        assert int(getattr(stats, name).sum()) == 0, name


def test_row_statistics_count_every_nonfinite_value(monkeypatch):
    """NaN and Inf in the inputs are counted per row where they are (the counts are skipped only
    when q and k bound every score), and so are weights that overflow under a wrong lse."""
    monkeypatch.setattr(capture, "STATS_CHUNK_ELEMENTS", 4 * 12 * 3)
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 9, 8, generator=gen), torch.randn(1, 2, 12, 8, generator=gen), torch.randn(1, 2, 12, 8)
    spec = masks.causal()
    clean = capture.LayerRecord(0, q, k, v, *eager_attend(q, k, v, spec, 0.3), spec, 0.3)
    assert capture.scores_are_finite(q, k, 0.3) and int(clean.stats.nonfinite_scores.sum()) == 0
    q2, k2 = q.clone(), k.clone()
    q2[0, 1, 4, 2] = float("nan")  # head 1, row 4: every allowed score of that row (keys 0..7)
    k2[0, 1, 10, 0] = float("inf")  # kv head 1, key 10: seen by rows 7 and 8 of heads 2 and 3
    out, lse = eager_attend(q2, k2, v, spec, 0.3)
    lse[0, 0, 6] -= 200.0  # head 0, row 6: its weights overflow to inf
    stats = capture.LayerRecord(0, q2, k2, v, out, lse, spec, 0.3).stats
    assert not capture.scores_are_finite(q2, k2, 0.3)
    bad = stats.nonfinite_scores[0]
    assert int(bad[1, 4]) == 8 and int(bad[2, 7]) == 1 and int(bad[3, 8]) == 1
    assert int(bad.sum()) == 8 + 4  # rows 7 and 8 of heads 2 and 3
    assert int(stats.nonfinite_weights[0, 0, 6]) > 0 and int(stats.nonfinite_weights[0, 0].sum()) == int(
        stats.nonfinite_weights[0, 0, 6]
    )


@pytest.mark.parametrize("band", [None, 7, 3 * 11])  # one band; fewer elements than a row; 3 rows
def test_nonfinite_counts_count_every_row_in_bands(monkeypatch, band):
    """NaN and ±Inf counted per row, a band of rows at a time: the same counts as a dense count,
    for logits-like ``[B, T, V]`` and for a transposed (non-contiguous) ``[B, H, S, D]`` output."""
    if band is not None:
        monkeypatch.setattr(capture, "NONFINITE_CHUNK_ELEMENTS", band)
    logits = torch.randn(2, 10, 11)
    logits[1, 7, 3], logits[1, 7, 4], logits[0, 9, 0] = float("nan"), float("inf"), float("-inf")
    out = torch.randn(2, 6, 4, 5).transpose(1, 2)  # (B, H=4, S=6, D=5), strides of (B, S, H, D)
    out[0, 2, 5, 1] = float("nan")
    for x in (logits, out):
        assert torch.equal(capture.nonfinite_counts(x), (~torch.isfinite(x)).sum(-1))
    assert int(capture.nonfinite_counts(logits)[1, 7]) == 2


def test_nan_in_the_logits_alone_is_found_at_its_row(monkeypatch):
    """The logits are counted in bands of rows (never as one [B, T, vocab] temporary): NaN injected
    after the last block, in rows far from the first band, is counted and placed (batch first)."""
    monkeypatch.setattr(capture, "NONFINITE_CHUNK_ELEMENTS", 3 * MODEL_ARGS["vocab"])  # 3 rows a band
    model = random_model(**MODEL_ARGS)

    def poison(module, args, output):
        output[1, 13, 0] = output[0, 17, 5] = float("nan")  # a NaN hidden value: every logit of its row is NaN

    hook = model.net.norm.register_forward_hook(poison)
    try:
        found, _ = run(model, checks="nan", prompt=[PROMPT, PROMPT[:16]])
    finally:
        hook.remove()
    check = found["nan"]
    assert not check.passed
    assert check.where == {"layer": None, "stage": "logits", "head": None, "position": 17, "batch": 0}
    counts = check.figures["nonfinite_counts"]
    assert counts["logits"] == 2 * MODEL_ARGS["vocab"]
    assert counts["scores"] == counts["weights"] == counts["output"] == counts["residual"] == 0


def test_a_runs_records_keep_one_buffer_per_kind():
    """What a forward keeps of its layers (q, output, lse, residual counts, row statistics) lives in
    one buffer per kind, and holds what the model gave its recorder and the statistics of each layer."""
    scope = attnscope.Scope(random_model(**MODEL_ARGS), backend="sdpa")
    run = scope.forward(PROMPT)
    capture.row_stats(run.records)
    plain = capture.Capture()  # no buffers: the model's own tensors
    ids = run.inputs.ids
    with torch.inference_mode():
        scope.model.forward(ids, scope.attend, cache=scope.model.new_cache(*ids.shape), recorder=plain)

    def storages(get):
        return {get(rec).untyped_storage().data_ptr() for rec in run.records}

    for get in (
        lambda r: r.q,
        lambda r: r.out,
        lambda r: r.lse,
        lambda r: r.residual_nonfinite,
        lambda r: r.stats.entropy,
        lambda r: r.stats.nonfinite_output,
    ):
        assert len(storages(get)) == 1
    for rec in run.records:
        mine = plain.records[rec.layer]
        for name in ("q", "k", "v", "out", "lse", "residual_nonfinite"):
            assert torch.equal(getattr(rec, name), getattr(mine, name)), name
        alone = mine.stats
        for name, value in vars(rec.stats).items():
            torch.testing.assert_close(value, getattr(alone, name), rtol=0, atol=0, equal_nan=True, msg=name)
    buffers = capture.LayerBuffers(2)
    first = torch.zeros(3)
    assert buffers.keep("x", 0, first).data_ptr() != first.data_ptr()  # copied into the buffer
    unlike = torch.zeros(4)
    assert buffers.keep("x", 1, unlike) is unlike  # another shape: kept as it is


def _diff_by_definition(a, r, tol, rows):
    """`diff` written out as its docstring says, one whole-tensor temporary after another."""
    zero = torch.zeros(())
    err = torch.where(torch.isnan(a) & torch.isnan(r), zero, (a - r).abs())
    err = torch.where(torch.isnan(a) ^ torch.isnan(r), torch.full_like(err, float("inf")), err)
    err = torch.where(rows[:, None, :, None], err, zero)
    finite = r[torch.isfinite(r)]
    atol = tol.atol * max(1.0, float(finite.abs().max())) if tol.scaled and finite.numel() else tol.atol
    over = err > atol + tol.rtol * torch.nan_to_num(r.abs(), nan=0.0, posinf=0.0)
    rel = err / r.abs().clamp_min(1e-6)
    return err.amax(dim=(0, 2, 3)), rel.amax(dim=(0, 2, 3)), over.any(-1), err.amax(-1)


@pytest.mark.parametrize("atol", [None, 1e-3])  # scaled by the reference's magnitude, or as given
@pytest.mark.parametrize("band", [1 << 22, 24, 48])  # elements at once: all 5 rows, 1 row, 2 rows of 5
def test_diff_follows_its_definition(atol, band, monkeypatch):
    """NaN on one side is a difference (inf), on both sides none; rows left out are 0; the default
    atol grows with the largest finite |reference| (of the whole tensor, whatever band of rows is
    compared at once); a value over tolerance marks its row."""
    from attnscope.inspector import checks
    from attnscope.inspector.checks import Tolerance, diff

    monkeypatch.setattr(checks, "DIFF_CHUNK_ELEMENTS", band)

    gen = torch.Generator().manual_seed(3)
    r = torch.randn(2, 3, 5, 4, generator=gen) * 4
    a = r + torch.randn(2, 3, 5, 4, generator=gen) * 1e-4
    a[0, 1, 2, 3] = float("nan")  # one side
    a[1, 0, 4, 0] = r[1, 0, 4, 0] = float("nan")  # both sides
    r[1, 2, 1, 1] = float("inf")
    a[0, 2, 0, 0] += 0.5  # over any tolerance
    a[1, 1, 3, 2] += 10.0  # in a row that is left out
    rows = torch.ones(2, 5, dtype=torch.bool)
    rows[1, 3] = False
    tol = Tolerance.for_dtype(torch.float32, atol=atol)
    got = diff(a, r, tol, rows)
    for name, value, want in zip(
        ("max_abs", "max_rel", "bad_rows", "row_max"),
        (got.max_abs, got.max_rel, got.bad_rows, got.row_max),
        _diff_by_definition(a, r, tol, rows),
        strict=True,
    ):
        torch.testing.assert_close(value, want, rtol=0, atol=0, equal_nan=True, msg=name)
    assert bool(got.bad_rows[0, 1, 2]) and bool(got.bad_rows[0, 2, 0]) and not bool(got.bad_rows[1, 1, 3])
    assert got.first_bad() == (0, 2, 0)


# ---- causality on long prompts: a window of the last positions, through a cache ---------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_causality_on_a_long_prompt_reruns_two_windows(monkeypatch, backend):
    """Past `CAUSALITY_LONG` tokens (made 16 here) the cuts fall in two windows of `CAUSALITY_WINDOW`
    (8) positions: the last ones, rerun alone through a cache of the rest that is copied from the
    run's own forward (no forward computes it again), and the first ones, rerun alone. A correct model
    passes (bit for bit with eager float32, against each window's own rerun; with sdpa against the
    parallel forward, within float32's tolerance); a leak in either window is found at its layer and
    position."""
    from attnscope.inspector import checks

    monkeypatch.setattr(checks, "CAUSALITY_LONG", 16)
    monkeypatch.setattr(checks, "CAUSALITY_WINDOW", 8)
    model = random_model(**MODEL_ARGS)
    forwards = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda ids, *a, **kw: forwards.append(ids.shape[1]) or forward(ids, *a, **kw))
    found, result = run(model, backend, checks=("causality",))
    check = found["causality"]
    assert check.passed, check.message
    assert result.run.cache is None  # copied from during the checks, not kept by the result
    assert check.figures["cut_points"] == [4, 14, 16, 18] and check.figures["windows"] == [[0, 7], [12, 19]]
    assert "p in [4, 14, 16, 18]; rerun: positions 0–7 and 12–19" in check.message
    if backend == "eager":  # bit for bit: each window's own rerun is its baseline
        assert forwards == [20, 8, 8, 8, 8, 8, 8]  # the run; the first window twice, the last one four times
    else:  # float32's tolerance: the parallel forward is the baseline, a rerun a cut
        assert forwards == [20, 8, 8, 8, 8]
    for leaky, position in (((16, 17), 16), ((4, 5), 4)):  # a leak in the last window, then in the first
        leak = torch.ones(20, 20, dtype=torch.bool).tril()
        leak[leaky] = True  # position p sees position p + 1
        model.net.layers[1].self_attn.mask = masks.custom(leak, f"causal+leak{leaky}")
        check = run(model, backend, checks=("causality",))[0]["causality"]
        assert not check.passed
        assert (check.where["layer"], check.where["position"], check.where["cut"]) == (1, position, position)


def test_causality_windows_do_not_see_a_leak_between_them(monkeypatch):
    """What the windows give up: a leak into a position between them (here 9 sees 10) is not looked
    for; the same check with a cut there, on the whole prompt, finds it."""
    from attnscope.inspector import checks

    monkeypatch.setattr(checks, "CAUSALITY_LONG", 16)
    monkeypatch.setattr(checks, "CAUSALITY_WINDOW", 8)
    model = random_model(**MODEL_ARGS)
    leak = torch.ones(20, 20, dtype=torch.bool).tril()
    leak[9, 10] = True
    model.net.layers[2].self_attn.mask = masks.custom(leak, "causal+leak(9→10)")
    found, result = run(model, checks=("causality",))
    assert found["causality"].passed
    tol = checks.Tolerance.for_dtype(torch.float32)
    whole = checks.causality_check(result.run, tol, cut_points=[9])
    assert not whole.passed and whole.figures["windows"] is None
    assert (whole.where["layer"], whole.where["position"]) == (2, 9)


def test_causality_without_a_cache_to_copy_prefills_the_window_prefix(monkeypatch):
    """An engine that cannot copy a cache's first positions (no ``cache_prefix``) gets them from a
    forward of those positions, with the same verdicts."""
    from attnscope.inspector import checks
    from attnscope.model.native import LoadedModel

    monkeypatch.setattr(checks, "CAUSALITY_LONG", 16)
    monkeypatch.setattr(checks, "CAUSALITY_WINDOW", 8)
    monkeypatch.delattr(LoadedModel, "cache_prefix")
    model = random_model(**MODEL_ARGS)
    check = run(model, checks=("causality",))[0]["causality"]
    assert check.passed and check.figures["windows"] == [[0, 7], [12, 19]]
    leak = torch.ones(20, 20, dtype=torch.bool).tril()
    leak[14, 15] = True
    model.net.layers[3].self_attn.mask = masks.custom(leak, "causal+leak(14→15)")
    check = run(model, checks=("causality",))[0]["causality"]
    assert not check.passed and (check.where["layer"], check.where["position"]) == (3, 14)


def test_incremental_mode_reaches_the_check_and_bad_specs_exit_2():
    from typer.testing import CliRunner

    from attnscope.cli import app

    model = random_model(**MODEL_ARGS)
    found, _ = run(model, checks=("full_vs_incremental",), incremental="chunks:6")
    assert found["full_vs_incremental"].figures["incremental"]["chunks"] == [[0, 5], [6, 11], [12, 17], [18, 19]]
    assert "chunks:6: positions 0–19 in 4 chunks" in found["full_vs_incremental"].message
    runner = CliRunner()
    for spec in ("chunks:0", "sometimes"):
        bad = runner.invoke(app, ["check", "-p", "x", "--incremental", spec, "--device", "cpu"])
        assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1, bad.output
        assert "--incremental" in bad.output
