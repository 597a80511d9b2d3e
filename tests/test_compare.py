"""`attnscope compare` and `attnscope.compare`: each finding shown to fire on the fault it exists for.

A model against an exact copy of itself is identical (bit for bit: one line, exit 0, "identical" in
the JSON); one query head's weights moved by a rounding error are not identical yet within the
tolerance, and that head alone is named. A float32 model against its bfloat16 self (--dtype-b) runs
and reports small nonzero differences. With one layer's k_proj perturbed (one
kv head's rows) the first divergence is that layer, in attention, with k the input that differs, and
only that kv head's query heads move there; with one layer's MLP perturbed it is that layer, in the
residual stream; with the output head perturbed only the logits and the top-1 agreement move. The
probability differences and the Jensen–Shannon divergences equal those of the dense matrices.
Different tokenizations and layouts are one-line errors.
"""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from support.models import random_model, save_hf_dir
from test_cli import assert_user_error, invoke

import attnscope
from attnscope.errors import UserError
from attnscope.inspector.compare import SCHEMA, compare_document

pytestmark = pytest.mark.usefixtures("single_thread")

ARGS = dict(layers=3, vocab=1024, hidden=64, max_positions=256)
IDS = torch.randint(1, 1024, (40,), generator=torch.Generator().manual_seed(0)).tolist()
LAYER, KV_HEAD, Q_HEAD = 1, 1, 2  # where the faults are planted
PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n"


def perturbed(model, part: str):
    """A copy of `model` with one part changed: "k_proj" (layer LAYER, the rows of kv head KV_HEAD),
    "q_proj" (layer LAYER, the rows of query head Q_HEAD, by a rounding error: 1e-6 relative), "mlp"
    (layer LAYER's down_proj), "lm_head" (its rows permuted), or "" (an exact copy)."""
    other = copy.deepcopy(model)
    net = other.net
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if part == "q_proj":
            rows = slice(Q_HEAD * net.config.head_dim, (Q_HEAD + 1) * net.config.head_dim)
            weight = net.layers[LAYER].self_attn.q_proj.weight
            weight[rows] *= 1 + 1e-6 * torch.randn(weight[rows].shape, generator=gen)
        elif part == "k_proj":
            rows = slice(KV_HEAD * net.config.head_dim, (KV_HEAD + 1) * net.config.head_dim)
            weight = net.layers[LAYER].self_attn.k_proj.weight
            weight[rows] += 0.5 * torch.randn(weight[rows].shape, generator=gen)
        elif part == "mlp":
            weight = net.layers[LAYER].mlp.down_proj.weight
            weight += 0.5 * torch.randn(weight.shape, generator=gen)
        elif part == "lm_head":
            net.lm_head.weight.copy_(net.lm_head.weight[torch.randperm(net.lm_head.weight.shape[0], generator=gen)])
    return other


@pytest.fixture(scope="module")
def model():
    return random_model(**ARGS)


def test_a_model_against_an_exact_copy_is_all_zero(model):
    c = attnscope.compare(model, perturbed(model, ""), IDS)
    assert c.identical and c.to_dict()["identical"]
    assert c.first_divergence() is None and c.passed
    assert not c.output_max.any() and not c.probability_max.any() and not c.js_mean.any()
    assert float(c.logits.max_abs.max()) == 0.0 and c.top1_agreement == 1.0
    assert [ch.passed for ch in c.checks()] == [True, True]
    assert not c.attention(LAYER, 0).any()
    from attnscope.render.diffmap import versus_panel

    console = Console(width=120, record=True, color_system=None)
    console.print(*versus_panel(c, LAYER, 0))
    assert console.export_text().startswith("vs random: identical: every layer, head and logit equal bit for bit")


def test_a_perturbed_k_proj_diverges_first_in_that_layers_attention(model):
    c = attnscope.compare(model, perturbed(model, "k_proj"), IDS)
    assert not c.identical
    first = c.first_divergence()
    assert (first["layer"], first["stage"], first["differs"]) == (LAYER, "attention", ["k"])
    group = model.layout.group_size
    moved = list(range(KV_HEAD * group, (KV_HEAD + 1) * group))
    still = [h for h in range(model.layout.n_heads) if h not in moved]
    assert first["head"] in moved
    # layers before are identical; in the layer, only the query heads that read the changed kv head move
    for values in (c.output_max, c.probability_max, c.js_mean):
        assert not values[:LAYER].any()
        assert (values[LAYER, moved] > 0).all() and not values[LAYER, still].any()
    assert c.heads_over[LAYER].tolist() == [h in moved for h in range(model.layout.n_heads)]
    assert not c.passed and not c.checks()[0].passed
    assert c.worst_head()[0] >= LAYER
    assert f"first divergence at layer {LAYER}, in attention" in c.checks()[0].message


def test_one_heads_rounding_error_is_not_identical_and_names_that_head(model):
    """Identical means equal bit for bit, not within tolerance: one query head's q_proj rows moved by
    1e-6 relative stay under the tolerance (passed) but the runs are not identical, and the layer ×
    head figures name that head first and alone in its layer (the layers before and the other heads
    of the layer are 0; the layers after read the changed residual stream)."""
    c = attnscope.compare(model, perturbed(model, "q_proj"), IDS)
    assert not c.identical and c.passed and c.first_divergence() is None
    assert [tuple(x) for x in np.argwhere(c.output_max > 0)][0] == (LAYER, Q_HEAD)
    assert not c.js_mean[:LAYER].any() and not c.output_max[:LAYER].any()
    moved = [h for h in range(model.layout.n_heads) if c.output_max[LAYER, h] > 0]
    assert moved == [Q_HEAD] and [h for h in range(model.layout.n_heads) if c.js_mean[LAYER, h] > 0] == [Q_HEAD]
    assert not c.to_dict()["identical"]


def test_a_perturbed_mlp_diverges_first_in_the_residual_stream(model):
    c = attnscope.compare(model, perturbed(model, "mlp"), IDS)
    first = c.first_divergence()
    assert (first["layer"], first["stage"], first["head"]) == (LAYER, "residual", None)
    assert not c.output_max[: LAYER + 1].any()  # this layer's attention agrees: the MLP comes after it
    assert c.output_max[LAYER + 1].all()  # the next layer's attention reads the changed residual stream
    assert "in the residual stream" in c.checks()[0].message


def test_a_perturbed_output_head_moves_only_the_logits(model):
    other = perturbed(model, "lm_head")
    c = attnscope.compare(model, other, IDS)
    assert not c.output_max.any() and not c.js_mean.any()
    divergence, logits = c.checks()
    assert divergence.passed and not logits.passed
    assert c.first_divergence()["stage"] == "logits"
    expected = attnscope.Scope(model).run(IDS).logits.argmax(-1) != attnscope.Scope(other).run(IDS).logits.argmax(-1)
    assert expected.any()
    assert c.top1_disagreements() == expected.nonzero().flatten().tolist()
    assert c.top1_agreement == pytest.approx(1 - float(expected.float().mean()))


def test_probabilities_and_js_equal_the_dense_matrices(model):
    """Computed a chunk of rows at a time from q, k and lse; the dense [T, T] matrices of the two runs
    (Result.attention) give the same figures, and the views are the dense difference."""
    other = perturbed(model, "k_proj")
    c = attnscope.compare(model, other, IDS)
    ra, rb = attnscope.Scope(model).run(IDS), attnscope.Scope(other).run(IDS)
    for layer in range(ra.n_layers):
        for head in range(ra.n_heads):
            pa, pb = ra.attention(layer, head).double(), rb.attention(layer, head).double()
            mid = (pa + pb) / 2
            kl = [torch.where(p > 0, p * (p.log() - mid.log()), 0.0).sum(-1) for p in (pa, pb)]
            js = ((kl[0] + kl[1]) / 2).mean()
            assert c.js_mean[layer, head] == pytest.approx(float(js), abs=1e-6)
            assert c.probability_max[layer, head] == pytest.approx(float((pa - pb).abs().max()), abs=1e-6)
            torch.testing.assert_close(c.attention(layer, head).double(), (pb - pa).abs(), atol=1e-6, rtol=0)
    layer, head = LAYER, KV_HEAD * model.layout.group_size
    dense = c.attention(layer, head).numpy()
    pooled = c.attention_pooled(layer, head, 8, 8)
    edges = np.linspace(0, len(IDS), 9).round().astype(int)
    expected = np.array(
        [[dense[edges[i] : edges[i + 1], edges[j] : edges[j + 1]].max() for j in range(8)] for i in range(8)]
    )
    np.testing.assert_allclose(pooled, expected, atol=1e-7)
    assert 0 < float(c.js_mean.max()) <= math.log(2)


def test_layouts_and_tokenizations_must_match(model, tmp_path, tiny_code):
    with pytest.raises(UserError, match="layers is 3 in A and 2 in B"):
        attnscope.compare(model, random_model(**{**ARGS, "layers": 2}), IDS)
    a = save_hf_dir(model, tmp_path / "a", tokenizer_from=tiny_code)
    b = save_hf_dir(model, tmp_path / "b", tokenizer_from=tiny_code)
    (b / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    with pytest.raises(UserError, match=r"token 0 is 0 \('<\|endoftext\|>'\) in a and 316 \('def'\) in b"):
        attnscope.compare(str(a), str(b), "def f(x):")


# ---- the command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dirs(model, tmp_path_factory, tiny_code) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        part or "same": save_hf_dir(perturbed(model, part), root / (part or "same"), tokenizer_from=tiny_code)
        for part in ("", "k_proj")
    }


def test_cli_exit_0_against_itself_and_1_on_a_divergence(dirs, tmp_path):
    out = tmp_path / "c.json"
    result = invoke("compare", "-m", str(dirs["same"]), "-m", str(dirs["same"]), "-p", PROMPT, "--json", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("identical: ") and len(result.output.strip().splitlines()) == 1
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA and doc["passed"] and doc["identical"]
    assert doc["prompts"][0]["first_divergence"] is None and doc["prompts"][0]["identical"]

    junit, svg = tmp_path / "c.xml", tmp_path / "c.svg"
    result = invoke(
        "compare",
        "-m",
        str(dirs["same"]),
        "-m",
        str(dirs["k_proj"]),
        "-p",
        PROMPT,
        "-p",
        "import os",
        "--json",
        str(out),
        "--junit",
        str(junit),
        "--svg",
        str(svg),
        "--backend",
        "eager",
    )
    assert result.exit_code == 1, result.output
    assert f"first divergence at layer {LAYER}, in attention" in result.output
    doc = json.loads(out.read_text())
    assert not doc["passed"] and not doc["identical"] and len(doc["prompts"]) == 2 and doc["backend"] == "eager"
    assert "A same (float32, native) · B k_proj (float32, native) · eager · cpu" in result.output
    entry = doc["prompts"][0]
    assert entry["first_divergence"]["layer"] == LAYER and entry["first_divergence"]["differs"] == ["k"]
    assert set(entry["layers"][0]["heads"][0]) == {
        "head",
        "kv_head",
        "output_max_abs_diff",
        "probability_max_abs_diff",
        "js_mean",
        "over_tolerance",
    }
    assert [c["name"] for c in entry["checks"]] == ["divergence", "logits"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "attnscope.compare" and suite.get("tests") == "4"
    failed = [case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None]
    assert any(name.startswith("divergence[") for name in failed)
    assert svg.read_text().startswith("<svg")


def test_cli_bad_input_is_one_line(dirs, tmp_path, tiny_code):
    assert_user_error(invoke("compare", "-m", str(dirs["same"]), "-p", "x"), "give two models")
    same = str(dirs["same"])
    assert_user_error(invoke("compare", same, same, "-m", same, "-p", "x"), "give two models", "got 3")
    assert_user_error(
        invoke("compare", same, same, "-p", "x", "--dtype-b", "float8"), "--dtype-b: unknown dtype 'float8'"
    )
    assert_user_error(invoke("compare", same, same, "-p", "x", "--engine-a", "vllm"), "--engine-a: unknown engine")
    assert_user_error(invoke("compare", "-m", str(dirs["same"]), "-m", str(dirs["same"])), "--prompt")
    other = random_model(**{**ARGS, "layers": 2})
    two = save_hf_dir(other, tmp_path / "two", tokenizer_from=tiny_code)
    out = tmp_path / "c.json"
    assert_user_error(
        invoke("compare", "-m", str(dirs["same"]), "-m", str(two), "-p", "x", "--json", str(out)),
        "different layouts: layers is 3 in same and 2 in two",
    )
    assert not out.exists()


@pytest.mark.usefixtures("samples")  # tiny-code and tiny-code-q4: missing, the test fails
def test_the_quantized_sample_diverges_from_tiny_code():
    result = invoke("compare", "tiny-code", "tiny-code-q4", "-p", "def f(x):")
    assert result.exit_code == 1, result.output
    assert "first divergence at layer 0, in attention" in result.output
    assert "heads most changed (mean JS)" in result.output
    # every head is over the float32 tolerance; the map's scale is its own range, the tolerance stated
    assert "(this map's range)" in result.output
    assert "✗ output or probabilities over atol 1e-05: 32 of 32 heads" in result.output


@pytest.mark.usefixtures("samples")
def test_a_sample_against_itself_is_one_line(tmp_path):
    out = tmp_path / "c.json"
    result = invoke("compare", "tiny-code", "tiny-code", "-p", "def f(x):", "--json", str(out), "--backend", "sdpa")
    assert result.exit_code == 0, result.output
    assert result.output == (
        "identical: every layer, head and logit equal bit for bit (1 prompt, 6 tokens) · "
        "A tiny-code (float32, native) · B tiny-code (float32, native) · sdpa\n"
    )
    doc = json.loads(out.read_text())
    assert doc["identical"] and doc["passed"] and doc["prompts"][0]["identical"]
    assert doc["prompts"][0]["first_divergence"] is None


@pytest.mark.usefixtures("samples")
def test_float32_against_its_bfloat16_self(tmp_path):
    """Each model's own dtype (--dtype-b): the same tokens, small nonzero differences computed in
    float32, the bfloat16 tolerance; exit 1 where that is crossed, else 0 (the JSON's `passed`)."""
    out = tmp_path / "c.json"
    result = invoke("compare", "tiny-code", "tiny-code", "--dtype-b", "bfloat16", "-p", PROMPT, "--json", str(out))
    doc = json.loads(out.read_text())
    assert result.exit_code == (0 if doc["passed"] else 1), result.output
    assert "A tiny-code (float32, native) · B tiny-code (bfloat16, native)" in result.output
    assert (doc["model_a"]["dtype"], doc["model_b"]["dtype"]) == ("float32", "bfloat16")
    assert doc["model_a"]["engine"] == doc["model_b"]["engine"] == "native"
    assert not doc["identical"] and doc["tolerance"]["atol"] > 1e-3  # bfloat16's, the looser
    entry = doc["prompts"][0]
    assert 0 < entry["logits"]["max_abs_diff"] < 0.5 and entry["logits"]["top1_agreement"] >= 0.9
    js = [h["js_mean"] for layer in entry["layers"] for h in layer["heads"]]
    assert max(js) > 0 and max(js) < 1e-3
    # --dtype sets both, --dtype-a overrides A: the same comparison
    again = invoke("compare", "tiny-code", "tiny-code", "--dtype", "bfloat16", "--dtype-a", "float32", "-p", PROMPT)
    assert again.exit_code == result.exit_code
    assert "A tiny-code (float32, native) · B tiny-code (bfloat16, native)" in again.output


def test_a_session_loads_b_in_its_own_dtype(dirs):
    from attnscope.session import Session

    same = str(dirs["same"])
    session = Session(same, compare_with=same, compare_dtype="bfloat16")
    c = session.compare(PROMPT)
    assert (c.run_a.model.dtype, c.run_b.model.dtype) == (torch.float32, torch.bfloat16)
    assert not c.identical and session.loaded is c.run_a.model
    assert session.describe().endswith(f" · vs {same} (bfloat16)")
    assert Session(same, compare_with=same).compare(PROMPT).identical


async def test_the_tui_diff_tab_shows_vs_b(dirs):
    from attnscope.render.diffmap import diff_panel
    from attnscope.tui.app import AttnScopeApp
    from attnscope.tui.panes import DiffPane

    app = AttnScopeApp(model=str(dirs["same"]), compare=str(dirs["k_proj"]), prompt=PROMPT, device="cpu")
    async with app.run_test(size=(120, 36)) as pilot:
        while app.result is None or app.workers:
            await pilot.pause(0.05)
        comparison = app.query_one(DiffPane).comparison
        assert comparison.first_divergence()["layer"] == LAYER
        await pilot.press("4")
        console = Console(width=120, record=True, color_system=None)
        console.print(diff_panel(app.result, LAYER, 0, comparison))
        text = console.export_text()
        assert "vs k_proj · max |Δ| of the attention output" in text
        assert "(this map's range)" in text and "┃ the tolerance 1e-05" in text
        assert f"first divergence at layer {LAYER}, in attention" in text
        assert "full vs incremental" in text
        assert app.sub_title.endswith(f" · vs {dirs['k_proj']}")


def test_a_document_of_several_prompts(model):
    other = perturbed(model, "k_proj")
    docs = json.loads(compare_document([attnscope.compare(model, other, IDS), attnscope.compare(model, model, IDS)]))
    assert docs["schema"] == SCHEMA and not docs["passed"]
    assert [p["passed"] for p in docs["prompts"]] == [False, True]
    assert docs["model_a"]["layers"] == 3 and docs["tolerance"]["atol"] == 1e-5
