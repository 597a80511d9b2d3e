"""Head roles: the known heads of `tiny-induction` are found with their roles; a random model
has no induction head; scores agree with the dense probabilities they summarize; a head has the
same role in `run` and `heads` whatever the prompt (the probe decides); and the default heatmap
head of `run` is the most focused one, never a head that looks at the first token only."""

from __future__ import annotations

import json
import re

import pytest
import torch
from support.models import random_model
from typer.testing import CliRunner

import attnscope
from attnscope import masks
from attnscope.cli import app
from attnscope.inspector.heads import MIN_KEYS, MIN_ROWS, REPEAT_LENGTH, THRESHOLDS, pick_role, repeated_sequence
from attnscope.inspector.report import pick_head

MODEL_ARGS = dict(layers=2, vocab=64, hidden=64, max_positions=256, seed=1, bos_token_id=0)


@pytest.mark.parametrize("std", [0.02, 0.2])
def test_a_random_model_claims_no_induction_head(std):
    roles = attnscope.Scope(random_model(**MODEL_ARGS, std=std)).head_roles()
    assert all(r.role != "induction" for layer in roles for r in layer)
    assert all(r.scores["induction"] < THRESHOLDS["induction"] / 2 for layer in roles for r in layer)


def test_scores_match_dense_probabilities():
    """Every score is a mean over the rows with at least MIN_KEYS keys (induction: over the second
    copy), on the probe for the roles and on the prompt for the prompt's scores."""
    scope = attnscope.Scope(random_model(**MODEL_ARGS, std=0.2))
    result = scope.run(list(range(5, 40)))
    roles = scope.head_roles(list(range(5, 40)))
    rep = scope.run(repeated_sequence(64, REPEAT_LENGTH, bos=0))  # the probe
    rows = range(MIN_KEYS - 1, len(result.tokens))  # row t sees t + 1 keys
    for layer in range(2):
        for head in range(4):
            p = result.attention(layer, head)
            r = rep.attention(layer, head)
            n = REPEAT_LENGTH
            induction = torch.stack([r[t, t - n + 1] for t in range(n + 1, 2 * n + 1)]).mean()
            probe_rows = range(MIN_KEYS - 1, 2 * n + 1)
            s, on_prompt = roles[layer][head].scores, roles[layer][head].prompt_scores
            assert on_prompt is not None
            assert on_prompt["previous_token"] == pytest.approx(
                float(torch.stack([p[i, i - 1] for i in rows]).mean()), abs=1e-5
            )
            assert on_prompt["sink"] == pytest.approx(float(p[MIN_KEYS - 1 :, 0].mean()), abs=1e-5)
            assert s["previous_token"] == pytest.approx(
                float(torch.stack([r[i, i - 1] for i in probe_rows]).mean()), abs=1e-5
            )
            assert s["sink"] == pytest.approx(float(r[MIN_KEYS - 1 :, 0].mean()), abs=1e-5)
            assert s["induction"] == pytest.approx(float(induction), abs=1e-5)


def test_role_choice():
    scores = {"induction": 0.9, "previous_token": 0.1, "sink": 0.1, "local": 0.2, "broad": 0.1}
    assert pick_role(scores) == "induction"
    assert (
        pick_role({"induction": 0.0, "previous_token": 0.9, "sink": 0.0, "local": 0.95, "broad": 0.1})
        == "previous_token"
    )
    assert pick_role({"induction": 0.1, "previous_token": 0.1, "sink": 0.3, "local": 0.3, "broad": 0.5}) is None


def test_tiny_induction_heads_are_found_as_documented(samples):
    card = (samples["tiny-induction"] / "README.md").read_text()
    documented = {
        (int(layer), int(head), role)
        for layer, head, role in re.findall(r"layer (\d+) head (\d+): (induction|previous_token)", card)
    }
    assert any(role == "induction" for *_, role in documented)
    assert any(role == "previous_token" for *_, role in documented)
    roles = attnscope.Scope(attnscope.load_model("tiny-induction")).head_roles()
    found = {(r.layer, r.head, r.role) for layer in roles for r in layer}
    assert documented <= found
    assert any(r.role == "previous_token" for r in roles[0])
    assert any(r.role == "induction" for r in roles[1])


@pytest.mark.usefixtures("samples")  # tiny-induction: missing, the test fails
def test_heads_command(tmp_path):
    out = tmp_path / "roles.json"
    result = CliRunner().invoke(app, ["heads", "-m", "tiny-induction", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "induction" in result.output and "previous_token" in result.output
    report = json.loads(out.read_text())
    roles = [h["role"] for layer in report["layers"] for h in layer["heads"]]
    assert "induction" in roles and "previous_token" in roles


def test_progress_reports_every_stage_to_its_total():
    """Scope.run's progress callback: each stage in order, counting up to its total (layers,
    tokens, tokens × layers, perturbations)."""
    calls = []
    model = random_model(**MODEL_ARGS)
    prompt = list(range(5, 17))
    attnscope.Scope(model, backend="sdpa").run(
        prompt,
        max_new_tokens=3,
        checks="all",
        roles=True,
        progress=lambda done, total, stage: calls.append((stage, done, total)),
    )
    order = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert order == [
        "forward",
        "decode",
        "statistics",
        "nan",
        "full_vs_incremental",
        "backend_vs_reference",
        "causality",
        "roles",
    ]
    layers = MODEL_ARGS["layers"]
    totals = {
        "forward": layers,
        "decode": 3,
        "statistics": layers,
        "nan": layers,
        "full_vs_incremental": 12 * layers,  # tokens × layers (float32: free-running only)
        "backend_vs_reference": layers,
        "causality": 3,
        "roles": layers,
    }
    for stage, total in totals.items():
        mine = [(done, t) for s, done, t in calls if s == stage]
        assert all(t == total for _, t in mine), stage
        assert mine[-1][0] == total and [d for d, _ in mine] == sorted(d for d, _ in mine), stage


# ---- one role per head: run and heads agree, whatever the prompt ----------------------------------

LONG_PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"


def roles_of(report: dict) -> dict[tuple[int, int], tuple[str | None, dict]]:
    return {(lr["index"], h["head"]): (h["role"], h["role_scores"]) for lr in report["layers"] for h in lr["heads"]}


@pytest.mark.usefixtures("samples")
@pytest.mark.parametrize("prompt", ["def f(x):", LONG_PROMPT], ids=["short", "long"])
def test_a_head_has_the_same_role_in_run_and_heads(tmp_path, prompt):
    """The roles of `run`'s report, of `heads` and of `heads --prompt` are the same, on a 6-token
    prompt and on a 49-token one: they are measured on the probe, not on the prompt."""
    paths = {name: tmp_path / f"{name}.json" for name in ("run", "heads", "heads-prompt")}
    commands = {
        "run": ["run", "-p", prompt, "-n", "0", "--checks", "none"],
        "heads": ["heads"],
        "heads-prompt": ["heads", "-p", prompt],
    }
    for name, args in commands.items():
        result = CliRunner().invoke(app, [*args, "--json", str(paths[name])])
        assert result.exit_code == 0, result.output
    found = {name: roles_of(json.loads(path.read_text())) for name, path in paths.items()}
    for other in ("heads", "heads-prompt"):
        assert found[other].keys() == found["run"].keys()
        for place, (role, scores) in found["run"].items():
            assert found[other][place][0] == role, place
            assert found[other][place][1] == pytest.approx(scores, abs=1e-3), place
    assert any(role is not None for role, _ in found["run"].values())  # tiny-code has a previous-token head


def test_a_prompt_too_short_gives_no_scores_and_the_probe_decides():
    scope = attnscope.Scope(random_model(**MODEL_ARGS, std=0.2))
    shortest = MIN_KEYS + MIN_ROWS - 1  # tokens: MIN_ROWS rows with MIN_KEYS keys
    short, enough = scope.head_roles(list(range(5, 5 + shortest - 1))), scope.head_roles(list(range(5, 5 + shortest)))
    probe = scope.head_roles()
    for layer in range(2):
        for head in range(4):
            assert short[layer][head].prompt_scores is None
            assert enough[layer][head].prompt_scores is not None
            assert short[layer][head].scores == enough[layer][head].scores == probe[layer][head].scores
            assert short[layer][head].role == probe[layer][head].role and probe[layer][head].reason is None


def test_a_model_too_short_for_the_probe_names_no_role():
    """A model whose positions hold a probe of fewer than MIN_ROWS repeated tokens: no role, and why."""
    model = random_model(**{**MODEL_ARGS, "max_positions": 2 * MIN_ROWS - 1})
    roles = attnscope.Scope(model).head_roles()
    assert all(r.role is None and r.reason and "a role needs" in r.reason for layer in roles for r in layer)
    report = attnscope.Scope(model).run(list(range(5, 20)), roles=True).report()
    assert all(h.role is None and h.role_reason for layer in report.layers for h in layer.heads)


def test_a_sliding_window_narrower_than_min_keys_names_no_role():
    model = random_model(**MODEL_ARGS, sliding_window=MIN_KEYS // 2)
    roles = attnscope.Scope(model).head_roles()
    assert all(r.role is None and "at least 16 keys" in (r.reason or "") for layer in roles for r in layer)


# ---- the default heatmap head ----------------------------------------------------------------------------


def sink_model(head: int = 2):
    """A random model in which query head `head` of layer 0 puts all its weight on token 0:
    every token's embedding carries a constant in channel 0 and the BOS token alone one in channel 1;
    the head's query reads channel 0 and its kv head's key channel 1, both in the slowest rotary
    pair (dims D/2 - 1 and D - 1), where positions within the prompt barely rotate them."""
    model = random_model(**MODEL_ARGS, std=0.2)
    net, D = model.net, 16
    with torch.no_grad():
        net.embed_tokens.weight[:, :2] = 0.0
        net.embed_tokens.weight[:, 0] = 3.0
        net.embed_tokens.weight[0, 1] = 3.0  # BOS (id 0)
        attn = net.layers[0].self_attn
        kv = head // (attn.n_heads // attn.n_kv_heads)
        q_rows, k_rows = attn.q_proj.weight[head * D : (head + 1) * D], attn.k_proj.weight[kv * D : (kv + 1) * D]
        q_rows.zero_()
        q_rows[D // 2 - 1, 0] = 3.0
        k_rows[D // 2 - 1].zero_()
        k_rows[D - 1].zero_()
        k_rows[D // 2 - 1, 1] = 3.0
    return model


def test_the_default_head_is_not_a_first_token_sink():
    model = sink_model(head=2)
    prompt = [0, *range(5, 40)]
    result = attnscope.Scope(model).run(prompt)
    report = result.report()
    sink = report.layers[0].heads[2]
    assert sink.first_token_mass > 0.99 and sink.focus < 0.01  # the planted head looks at token 0 only
    assert sink.entropy == min(h.entropy for lr in report.layers for h in lr.heads)  # the old rule's pick
    layer, head, why = pick_head(report)
    assert (layer, head) != (0, 2) and "most focused" in why
    chosen = report.layers[layer].heads[head]
    assert chosen.focus == max(h.focus for lr in report.layers for h in lr.heads)
    # focus: the mean over rows of the largest weight on a key but 0, the query and the one before
    p = result.attention(layer, head)
    T = p.shape[0]
    off = torch.tensor([[k in (0, q, q - 1) or k > q for k in range(T)] for q in range(T)])
    assert chosen.focus == pytest.approx(float(p.masked_fill(off, 0).amax(-1).mean()), abs=1e-5)


@pytest.mark.usefixtures("samples")
@pytest.mark.parametrize("prompt", ["abcdefgh abcdefgh", "Kq3zPbW7mR Kq3zPbW7mR"])
def test_the_default_head_on_tiny_induction_is_an_induction_head(prompt):
    scope = attnscope.Scope(attnscope.load_model("tiny-induction"))
    report = scope.run(prompt, roles=True).report()
    layer, head, _ = pick_head(report)
    assert report.layers[layer].heads[head].role == "induction"


def test_the_default_head_falls_back_to_entropy_when_no_row_has_a_key_to_focus_on():
    report = attnscope.Scope(random_model(**MODEL_ARGS)).run([0, 5, 6]).report()
    layer, head, why = pick_head(report)
    assert why == " · lowest mean entropy"
    assert report.layers[layer].heads[head].entropy == min(h.entropy for lr in report.layers for h in lr.heads)


@pytest.mark.parametrize(
    "spec",
    [
        masks.causal(),
        masks.causal() & masks.sliding_window(5),
        masks.causal() & masks.padding([9, 16], side="left", total=16),
        masks.causal() & masks.padding([9, 16], side="right", total=16),
        masks.prefix_lm(6),
        masks.causal() & masks.document([0] * 5 + [1] * 7 + [2] * 4),
        masks.causal() & masks.chunked(4),
        masks.custom(torch.rand(16, 16, generator=torch.Generator().manual_seed(0)).lt(0.5)),
        masks.causal() | masks.sliding_window(3),
    ],
    ids=repr,
)
@pytest.mark.parametrize("q_len", [16, 5, 1])
def test_key_counts_from_intervals_are_those_of_the_dense_mask(spec, q_len):
    """The keys each row may see, from a mask's row intervals where it has them (no dense mask
    built), equal the dense mask's count, a cache before the queries included."""
    from types import SimpleNamespace

    from attnscope.inspector.heads import key_counts

    rec = SimpleNamespace(mask=spec, shape=(q_len, 16), q=torch.zeros(1, 1, q_len, 1))
    assert torch.equal(key_counts(rec), spec.dense(q_len, 16)[0].sum(-1))
