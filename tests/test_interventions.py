"""Interventions (zero, mean, reference, patch, hide) and the bisection of a divergence to its layers.

Each is shown to do what it says on a model whose answer is known: an ablated head's output is 0 and
nothing before its layer moves; the reference output on a float32 model changes nothing beyond
rounding; hiding keys changes only the heads it is applied to; the bisection finds exactly the
layers whose attention weights were perturbed, in fewer forwards than layers squared, and says when
attention does not explain the difference (a perturbed MLP).
"""

from __future__ import annotations

import json

import pytest
import torch
from support.models import build_architecture, random_ids
from test_cli import assert_user_error
from typer.testing import CliRunner

import attnscope
from attnscope.backends import get_backend
from attnscope.cli import app
from attnscope.errors import ArgumentError
from attnscope.inspector.interventions import Intervention, bisect, effect, kv_group

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return attnscope.load_model("tiny-code")


@pytest.fixture(scope="module")
def ids(tiny):
    return torch.tensor([tiny.tokenizer.encode("def fibonacci(n):\n    return n if n < 2 else")])


def perturbed(name: str, scale: float = 0.5, seed: int = 0):
    """A fresh tiny-code whose parameter `name` has noise added."""
    model = attnscope.load_model("tiny-code")
    param = dict(model.net.named_parameters())[name]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        param += scale * param.abs().mean() * torch.randn(param.shape, generator=gen)
    return model


def test_parse_and_describe():
    assert Intervention.parse("zero@3:1,2") == Intervention("zero", 3, (1, 2))
    assert Intervention.parse("reference@5") == Intervention("reference", 5)
    assert Intervention.parse("hide[0:4]@2:0") == Intervention("hide", 2, (0,), (0, 4))
    assert str(Intervention.parse("hide[0:4]@2:0")) == "hide[0:4]@2:0"
    assert kv_group(1, 8, 2) == (4, 5, 6, 7)
    for bad in ("zero", "zero@", "nuke@1", "zero@x", "zero@1:a", "hide@1", "zero[0:2]@1"):
        with pytest.raises(ArgumentError):
            Intervention.parse(bad)


def test_zero_ablation_changes_that_head_and_what_follows_only(tiny, ids):
    sdpa = get_backend("sdpa")
    found = effect(tiny, sdpa, ids, [Intervention("zero", 2, (3,))])
    assert found.layer_output_max_abs_diff[:2] == [0.0, 0.0]  # before the layer: bit for bit
    assert found.layer_output_max_abs_diff[2] > 0 and found.layer_output_max_abs_diff[3] > 0
    assert found.logits_max_abs_diff > 0 and max(found.kl_per_position) > 0
    assert "zero@2:3" in found.summary() and "attention changes from layer 2" in found.summary()


def test_the_reference_output_changes_a_float32_model_by_rounding_only(tiny, ids):
    found = effect(tiny, get_backend("sdpa"), ids, [Intervention("reference", layer) for layer in range(4)])
    assert found.logits_max_abs_diff < 1e-4 and found.top1_agreement == 1.0


def test_hiding_keys_changes_only_the_heads_it_names(tiny, ids):
    from attnscope.inspector.capture import OutputCapture
    from attnscope.inspector.interventions import intervene

    eager = get_backend("eager")
    outputs = []
    for attend in (eager, intervene(eager, [Intervention("hide", 1, (2,), (1, 4))], 4)):
        capture = OutputCapture()
        tiny.forward(ids, attend, recorder=capture)
        outputs.append(capture.layers()[1].out)
    moved = (outputs[0] - outputs[1]).abs().amax((0, 2, 3))  # per head of layer 1
    assert moved[2] > 0 and moved[torch.arange(8) != 2].max() == 0


def test_mean_is_the_heads_average_over_positions(tiny, ids):
    found = effect(tiny, get_backend("eager"), ids, [Intervention("mean", 0)])
    assert found.layer_output_max_abs_diff[0] > 0


def test_bisect_finds_exactly_the_perturbed_layers(tiny, ids):
    b = perturbed("layers.1.self_attn.q_proj.weight")
    with torch.no_grad():
        dict(b.net.named_parameters())["layers.3.self_attn.k_proj.weight"].mul_(1.5)
    found = bisect(tiny, b, get_backend("eager"), ids, atol=1e-5)
    assert found.restored and found.culprits == [1, 3]
    assert found.heads == {1: list(range(8)), 3: list(range(8))}  # every head's q or k moved
    assert found.steps[-1][2] <= 1e-5 and found.steps[0][2] > 1e-5  # layer 1 alone does not restore
    assert "culprit layers: 1 (heads 0, 1, 2" in found.summary()


def test_bisect_names_one_faulty_head_of_a_kernel_in_few_forwards(tiny, ids):
    """A backend whose layer 2 head 5 is wrong, against the reference: the pair is one model, two
    attends."""
    from attnscope.inspector.interventions import intervene

    eager = get_backend("eager")
    faulty = intervene(eager, [Intervention("zero", 2, (5,))], 4)
    found = bisect(tiny, tiny, eager, ids, attend_b=faulty, atol=1e-5)
    assert found.culprits == [2] and found.heads == {2: [5]}
    assert found.forwards <= 2 + 2 * 2 + 2 * 3 + 1  # unpatched and all, log2(4) layers, log2(8) heads, a step


def test_bisect_says_what_attention_does_not_explain(tiny, ids):
    b = perturbed("layers.2.mlp.up_proj.weight", scale=2.0)
    found = bisect(tiny, b, get_backend("eager"), ids, atol=1e-5)
    assert not found.restored and found.culprits == []
    assert "the residual stream differs where attention does not" in found.summary()


def test_bisect_through_the_hf_engine():
    model = build_architecture("llama")
    other = build_architecture("llama")
    with torch.no_grad():
        other.model.layers[1].self_attn.v_proj.weight.mul_(1.3)
    a, b = attnscope.from_transformers(model), attnscope.from_transformers(other)
    ids = random_ids(16, 100, seed=1) % 97 + 3
    found = bisect(a, b, get_backend("sdpa"), ids, atol=1e-5)
    assert found.restored and found.culprits == [1]


def test_cli_run_intervene_and_bisect(tmp_path, samples):
    runner = CliRunner()
    out = tmp_path / "effect.json"
    result = runner.invoke(
        app, ["run", "-p", "def f(x):", "--checks", "none", "-n", "0", "--intervene", "zero@1:0,1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "zero@1:0,1: logits max |Δ|" in " ".join(result.output.split())
    assert json.loads(out.read_text())["interventions"][0]["interventions"] == ["zero@1:0,1"]
    bisected = runner.invoke(app, ["bisect", "tiny-code", "tiny-code-q4", "-p", "def f(x):", "--atol", "1e-5"])
    assert bisected.exit_code in (0, 1), bisected.output
    assert "culprit layers" in bisected.output or "residual stream differs" in bisected.output
    assert_user_error(runner.invoke(app, ["run", "-p", "x", "--intervene", "zero@9"]), "layer must be in 0..3")
    assert_user_error(runner.invoke(app, ["run", "-p", "x", "--intervene", "nuke@1"]), "--intervene must be one of")
