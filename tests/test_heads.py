"""Head roles: the known heads of `tiny-induction` are found with their roles; a random model
has no induction head; scores agree with the dense probabilities they summarize."""

from __future__ import annotations

import json
import re

import pytest
import torch
from support.models import random_model
from typer.testing import CliRunner

import attnscope
from attnscope.cli import app
from attnscope.inspector.heads import REPEAT_LENGTH, THRESHOLDS, pick_role, repeated_sequence

MODEL_ARGS = dict(layers=2, vocab=64, hidden=64, max_positions=256, seed=1, bos_token_id=0)


@pytest.mark.parametrize("std", [0.02, 0.2])
def test_a_random_model_claims_no_induction_head(std):
    roles = attnscope.Scope(random_model(**MODEL_ARGS, std=std)).head_roles()
    assert all(r.role != "induction" for layer in roles for r in layer)
    assert all(r.scores["induction"] < THRESHOLDS["induction"] / 2 for layer in roles for r in layer)


def test_scores_match_dense_probabilities():
    scope = attnscope.Scope(random_model(**MODEL_ARGS, std=0.2))
    result = scope.run(list(range(5, 40)))
    roles = scope.head_roles(list(range(5, 40)))
    rep = scope.run(repeated_sequence(64, REPEAT_LENGTH, bos=0))  # what the induction score is measured on
    for layer in range(2):
        for head in range(4):
            p = result.attention(layer, head)
            T = p.shape[0]
            prev = torch.stack([p[i, i - 1] for i in range(1, T)]).mean()
            sink = p[1:, 0].mean()
            r = rep.attention(layer, head)
            n = REPEAT_LENGTH
            induction = torch.stack([r[t, t - n + 1] for t in range(n + 1, 2 * n + 1)]).mean()
            s = roles[layer][head].scores
            assert s["previous_token"] == pytest.approx(float(prev), abs=1e-5)
            assert s["sink"] == pytest.approx(float(sink), abs=1e-5)
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
