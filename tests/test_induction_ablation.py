"""Ablation on a model whose circuit is known: tiny-induction copies a repeated random string with a
previous-token head (layer 0, head 0) feeding induction heads (layer 1, query heads 2 and 3, which
read kv head 1). Zeroing the induction heads or the previous-token head breaks the greedy
continuation of the copy; zeroing a head the copy does not use (layer 1, head 0) leaves the
continuation and the copy's next-token distributions as they were.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import attnscope
from attnscope.backends import get_backend
from attnscope.cli import app
from attnscope.inspector.interventions import Intervention, effect

pytestmark = pytest.mark.usefixtures("single_thread")

STRING = "kQx3bTz0pRmWa"
PROMPT = f"{STRING} {STRING[:10]}"  # the copy is cut short: the model continues it with "mWa"


@pytest.fixture(scope="module")
def model():
    return attnscope.load_model("tiny-induction")


@pytest.fixture(scope="module")
def ids(model):
    return torch.tensor([model.tokenizer.encode(PROMPT)])


def run(model, ids, spec: str):
    return effect(model, get_backend("eager"), ids, [Intervention.parse(spec)], new_tokens=8)


def copy_rows(ids) -> slice:
    """The positions whose next token the copy decides: from the copy's second token on (at its first
    one the model cannot yet tell a copy from a longer string)."""
    return slice(2 + len(STRING), ids.shape[1])


@pytest.mark.parametrize("spec", ["zero@1:2,3", "zero@1:kv1", "zero@0:0"])
def test_ablating_the_circuit_breaks_the_copy(model, ids, spec):
    found = run(model, ids, spec)
    assert found.continuation_texts[0] == "mWakQx3b"  # the plain run copies, then starts the string again
    assert found.continuation_change is not None and found.continuation_change <= 1
    assert max(found.kl_per_position[copy_rows(ids)]) > 1.0  # nats: the copy's predictions move
    assert str(found.interventions[0]) in found.summary() and "continuation changes at token" in found.summary()


def test_a_kv_head_names_the_query_heads_that_read_it(model, ids):
    by_kv, by_query = run(model, ids, "zero@1:kv1"), run(model, ids, "zero@1:2,3")
    assert by_kv.kl_per_position == by_query.kl_per_position
    assert by_kv.continuation == by_query.continuation


def test_ablating_a_head_the_copy_does_not_use_changes_nothing_that_matters(model, ids):
    found = run(model, ids, "zero@1:0")
    assert found.continuation_change is None and found.continuation[0] == found.continuation[1]
    rows = copy_rows(ids)
    assert max(found.kl_per_position[rows]) < 0.05  # nats; the induction heads move it by > 1
    assert not set(found.changed_positions) & set(range(rows.start, rows.stop))
    assert found.layer_output_max_abs_diff[0] == 0.0  # nothing before the ablated layer moves
    assert "continuation is unchanged: 'mWakQx3b'" in found.summary()


def test_cli_shows_the_continuation_each_way():
    result = CliRunner().invoke(
        app, ["run", "-m", "tiny-induction", "-p", PROMPT, "-n", "8", "--checks", "none", "--intervene", "zero@1:kv1"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "zero@1:kv1: logits max |Δ|" in text and "'mWakQx3b' ->" in text


def test_kv_heads_parse_and_are_checked(model, ids):
    from attnscope.errors import ArgumentError

    assert Intervention.parse("zero@1:kv1") == Intervention("zero", 1, kv_heads=(1,))
    assert str(Intervention.parse("hide[0:4]@1:kv0,kv1")) == "hide[0:4]@1:kv0,kv1"
    assert Intervention.parse("zero@1:kv1").query_heads(4, 2) == (2, 3)
    with pytest.raises(ArgumentError, match="not both"):
        Intervention.parse("zero@1:kv1,2")
    with pytest.raises(ArgumentError, match="kv head 2 is not in 0..1"):
        run(model, ids, "zero@1:kv2")
