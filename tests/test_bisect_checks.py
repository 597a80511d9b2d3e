"""Debugging a failed check by experiment: `check --bisect`, `check --intervene`, the full-vs-incremental
pair, and patching another model's attention from the command line.

Faults are planted and the bisection must name them: a backend wrong in one head of layer 2 only
(against the eager reference), a KV cache that loses a key in layer 2 only (the incremental decoding
against the parallel forward), a perturbed projection of layer 1 in model B (compare's patch). A
check that fails in attention while the greedy tokens agree must say there is nothing to bisect.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.models import build_architecture, random_ids
from test_checks import DroppingCache
from test_cli import assert_user_error
from typer.testing import CliRunner

import attnscope
from attnscope.backends import get_backend, register_backend
from attnscope.cli import app
from attnscope.engine import in_pieces
from attnscope.inspector.incremental import parse_mode
from attnscope.inspector.interventions import (
    Intervention,
    bisect_failures,
    bisect_incremental,
    intervene,
    pair_effect,
)
from attnscope.inspector.run import Inputs
from attnscope.model import llama

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "def fibonacci(n):\n    return n if n < 2 else"  # 20 tokens of tiny-code
EAGER = get_backend("eager")
# one head of one layer wrong, the rest the reference: zeroing layer 2's head 3 moves the greedy tokens
# of PROMPT, zeroing its head 5 moves the logits but not one greedy token
register_backend("test-wrong-l2h3", intervene(EAGER, [Intervention("zero", 2, (3,))], 4))
register_backend("test-wrong-l2h5", intervene(EAGER, [Intervention("zero", 2, (5,))], 4))


@pytest.fixture(scope="module")
def tiny():
    return attnscope.load_model("tiny-code")


@pytest.fixture
def dropping_cache(monkeypatch):
    """Every native model's new caches lose a key in layer 2 (models loaded by the CLI too)."""
    monkeypatch.setattr(llama, "KVCache", DroppingCache)


def ids_of(model, text: str = PROMPT) -> torch.Tensor:
    return torch.tensor([model.tokenizer.encode(text)])


# ---- patch through a KV cache ------------------------------------------------------------------------


def test_a_patch_takes_the_rows_of_each_calls_positions():
    """The rows a call computes are its positions, counted per layer: a parallel call's 0..T-1, a
    cache's pieces in turn (even when the cache loses a key and k_len says otherwise), and the last
    positions of a cache filled elsewhere."""
    source = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 2, 8, 1)  # (B, Hq, T, D): row i holds i

    def zeros(q, k, v, mask, scale, *, need_lse=True):
        return torch.zeros_like(q), None

    def calls(lengths):
        patched = intervene(zeros, [Intervention("patch", 0)], 1, {0: source})
        rows = []
        for q_len, k_len in lengths:
            q, k = torch.zeros(1, 2, q_len, 1), torch.zeros(1, 2, k_len, 1)
            rows.append(patched(q, k, k, None, 1.0)[0][0, 0, :, 0].tolist())
        return rows

    assert calls([(8, 8)]) == [list(range(8))]
    assert calls([(3, 3), (2, 5), (1, 6)]) == [[0, 1, 2], [3, 4], [5]]
    assert calls([(3, 3), (2, 4), (1, 5)]) == [[0, 1, 2], [3, 4], [5]]  # a cache that lost a key
    assert calls([(2, 6), (1, 7)]) == [[4, 5], [6]]  # a prefix cached elsewhere


@pytest.mark.parametrize("mode", ["tokens", "default", "chunks:5,3"])
def test_patching_the_faulty_layer_from_the_parallel_forward_repairs_every_piece(tiny, mode, monkeypatch):
    """A left-padded batch through a cache that loses a key in layer 2, in the pieces of each mode:
    layer 2's attention taken from the parallel forward, at each piece's positions (padding
    included), brings the incremental logits of the real tokens to the parallel ones."""
    monkeypatch.setattr(tiny.net, "new_cache", lambda b, n: DroppingCache(tiny.net.config, b, n, torch.float32, "cpu"))
    tok = tiny.tokenizer
    inputs = Inputs.pad([tok.encode(PROMPT), tok.encode("def f(x):")], "left", "cpu")
    kw = dict(mask=inputs.padding, positions=inputs.positions)
    from attnscope.inspector.capture import OutputCapture

    capture = OutputCapture()
    with torch.inference_mode():
        parallel = tiny.forward(inputs.ids, EAGER, recorder=capture, **kw)
    patches = {i: rec.out for i, rec in enumerate(capture.layers())}
    pieces = parse_mode(mode).plan(inputs.ids.shape[1]).pieces
    real = inputs.real[..., None]

    def incremental(attend):
        with torch.inference_mode():
            cache = tiny.new_cache(*inputs.shape)
            logits = in_pieces(tiny, inputs.ids, attend, pieces=pieces, cache=cache, **kw)
        return float(((logits - parallel).abs() * real).max())

    assert incremental(EAGER) > 0.1  # the fault
    assert incremental(intervene(EAGER, [Intervention("patch", 2)], 4, patches)) < 1e-4


# ---- the full-vs-incremental pair --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tokens", "default"])
def test_the_incremental_bisection_names_the_cache_fault_layer(tiny, mode, monkeypatch):
    monkeypatch.setattr(tiny.net, "new_cache", lambda b, n: DroppingCache(tiny.net.config, b, n, torch.float32, "cpu"))
    ids = ids_of(tiny)
    found = bisect_incremental(tiny, EAGER, ids, parse_mode(mode).plan(ids.shape[1]).pieces)
    assert found.output_differs and found.restored and found.culprits == [2]
    assert found.unpatched[0] < 1 and found.steps[-1][1] == 1.0
    assert "culprit layers: 2" in found.summary() and "from the full forward restores" in found.summary()


def test_a_correct_cache_has_nothing_to_bisect(tiny):
    found = bisect_incremental(tiny, EAGER, ids_of(tiny))
    assert not found.output_differs and found.culprits == [] and found.unpatched[0] == 1.0
    assert "nothing to bisect" in found.summary()


def test_the_incremental_bisection_runs_through_the_hf_engines_cache():
    """The transformers model decoded through its own cache in chunks and tokens: a correct cache has
    nothing to bisect, and patching every layer from the parallel forward changes nothing that counts."""
    model = attnscope.from_transformers(build_architecture("llama"))
    ids = random_ids(16, 100, seed=1) % 97 + 3
    found = bisect_incremental(model, get_backend("sdpa"), ids, [5, 3, *[1] * 8], atol=1e-4)
    assert not found.output_differs and found.unpatched[1] < 1e-4
    assert found.all_layers[0] == 1.0 and found.all_layers[1] < 1e-4


# ---- check --bisect ----------------------------------------------------------------------------------


def test_bisect_failures_names_the_backends_faulty_layer_and_head(tiny):
    result = attnscope.Scope(tiny, backend="test-wrong-l2h3").run(PROMPT, checks="backend_vs_reference")
    check = result.checks[0]
    assert not check.passed and check.where["layer"] == 2
    [(name, found)] = bisect_failures(result.run, result.checks)
    assert name == "backend_vs_reference"
    assert found.culprits == [2] and found.heads == {2: [3]} and found.restored
    assert check.figures["bisect"]["culprits"] == [2] and check.figures["bisect"]["heads"] == {"2": [3]}
    assert "taken from the eager reference restores test-wrong-l2h3's output" in found.summary()


def test_check_bisect_on_a_faulty_backend(tmp_path):
    out, junit = tmp_path / "report.json", tmp_path / "report.xml"
    args = ["check", "-b", "test-wrong-l2h3", "--checks", "backend_vs_reference,nan", "-p", PROMPT]
    result = CliRunner().invoke(app, [*args, "--bisect", "--json", str(out), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "bisect · prompt 0 · test-wrong-l2h3 · backend_vs_reference: culprit layers: 2 (heads 3)" in text
    assert "+ layer 2: greedy agreement 100%" in text
    assert text.rstrip().endswith("1 passed, 1 failed")  # the tally stays last
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    found = checks["backend_vs_reference"]["figures"]["bisect"]
    assert found["culprits"] == [2] and found["output_differs"] and found["b"] == "test-wrong-l2h3"
    assert "bisect" not in checks["nan"]["figures"]  # passed: nothing bisected
    assert '"culprits": [\n' in junit.read_text()  # the failure's figures, and its message says it
    assert "· bisect: culprit layers: 2 (heads 3): their attention taken from the eager reference" in junit.read_text()
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 1 and "bisect" not in plain.output


def test_check_bisect_on_a_cache_fault(dropping_cache):
    args = ["check", "-b", "eager", "--checks", "full_vs_incremental", "-p", PROMPT, "--bisect"]
    result = CliRunner().invoke(app, [*args, "--incremental", "tokens"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "full_vs_incremental: culprit layers: 2" in text
    assert "taken from the full forward restores the incremental decoding's output" in text


def test_check_bisect_says_when_the_greedy_tokens_agree(dropping_cache):
    """Failed checks whose pair agrees on every greedy token (the wrong head of layer 2 moves logits
    only; the lost key, in chunks, too): nothing is bisected, and that is said."""
    runner = CliRunner()
    for args, b in (
        (["-b", "test-wrong-l2h5", "--checks", "backend_vs_reference"], "test-wrong-l2h5"),
        (["-b", "eager", "--checks", "full_vs_incremental", "--incremental", "chunks:5,3"], "the incremental decoding"),
    ):
        result = runner.invoke(app, ["check", *args, "-p", PROMPT, "--bisect"])
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert f"{b}'s output already agrees with" in text and "greedy agreement 100%" in text
        assert "nothing to bisect" in text and "culprit" not in text and "none patched" not in text


# ---- check --intervene, compare --intervene ----------------------------------------------------------


def test_check_intervene_lists_the_effect_per_prompt(tmp_path):
    out = tmp_path / "reports.json"
    result = CliRunner().invoke(
        app,
        ["check", "-p", "def f(x):", "-p", "import os", "--checks", "nan", "--intervene", "zero@1:0,1"]
        + ["--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for n in (0, 1):
        assert f"intervene · prompt {n} · " in text
    assert text.count(": zero@1:0,1: logits max |Δ|") == 2
    reports = json.loads(out.read_text())["reports"]
    assert [r["interventions"][0]["interventions"] for r in reports] == [["zero@1:0,1"]] * 2
    plain = tmp_path / "plain.json"
    assert CliRunner().invoke(app, ["check", "-p", "x", "--checks", "nan", "--json", str(plain)]).exit_code == 0
    assert "interventions" not in json.loads(plain.read_text())  # the schema as it was without the flag


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["check", "--intervene", "zero@9"], "--intervene zero@9: layer must be in 0..3"),
        (["check", "--intervene", "nuke@1"], "--intervene must be one of"),
        (["check", "--intervene", "patch@1"], "patch takes another model's attention"),
        (["check", "--bisect", "--top1", "1.5"], "--top1 must be in (0, 1]"),
        (["compare", "tiny-code", "tiny-code", "--intervene", "zero@1:8"], "head 8 is not in 0..7"),
        (["compare", "tiny-code", "tiny-code", "--intervene", "patch"], "--intervene must read KIND@LAYER"),
    ],
)
def test_bad_experiments_are_one_line_and_exit_2(args, fragment):
    assert_user_error(CliRunner().invoke(app, [*args, "-p", "def f(x):"]), fragment)


def test_patching_as_attention_into_b_brings_it_back(tiny, tmp_path, samples):
    """B's layer 1 q projection is perturbed: A's layer 1 attention patched into B's forward gives A's
    output, in the API and from the command line."""
    b = attnscope.load_model("tiny-code")
    with torch.no_grad():
        b.net.layers[1].self_attn.q_proj.weight.mul_(1.5)
    found = pair_effect(tiny, b, EAGER, ids_of(tiny, "def f(x):"), [Intervention("patch", 1)])
    assert found.plain[1] > 1e-2 and found.changed == (1.0, 0.0)
    assert found.effect.layer_output_max_abs_diff[0] == 0 and found.effect.layer_output_max_abs_diff[1] > 0
    assert "against A: greedy agreement" in found.summary()

    path = tmp_path / "b"  # the sample's directory, with B's perturbed weight
    shutil.copytree(samples["tiny-code"], path)
    weights = load_file(path / "model.safetensors")
    weights["model.layers.1.self_attn.q_proj.weight"] = b.net.layers[1].self_attn.q_proj.weight.detach().clone()
    save_file(weights, path / "model.safetensors")
    out = tmp_path / "compare.json"
    args = ["compare", "tiny-code", str(path), "-p", "def f(x):", "-b", "eager", "--intervene", "patch@1"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "intervene · prompt 1 'def f(x):': patch@1: logits max |Δ|" in " ".join(result.output.split())
    against = json.loads(out.read_text())["prompts"][0]["interventions"][0]["against_a"]
    assert against["with"] == {"top1_agreement": 1.0, "logits_max_abs_diff": 0.0}
    assert against["without"]["logits_max_abs_diff"] > 1e-2
