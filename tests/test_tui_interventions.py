"""Ablation in the TUI: `a` zeroes the attention output of the head shown and the prompt runs again with
it (a worker), beside the run without it; `a` again, or `A`, restores the baseline exactly; `tui
--intervene` starts with interventions. The core underneath: `toggle_head`, `Scope.run(interventions=)`
and `Session.intervene`, whose effect is the one `effect` measures."""

from __future__ import annotations

import pytest
import torch
from support.samples import sample
from test_tui import wait_for
from textual.widgets import TabbedContent

from attnscope.inspector.interventions import Intervention, acted_on, effect, toggle_head
from attnscope.tui.ablation import Ablations
from attnscope.tui.app import AttnScopeApp
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import Navigator
from attnscope.tui.panes import DiffPane, TokensPane

PROMPT = "def f(x):\n    return x"
pytestmark = pytest.mark.usefixtures("tiny_code")  # the committed sample: missing, the tests fail (tests/conftest.py)


def settled(app: AttnScopeApp):
    """The run, and the run with the interventions when there are any, are done (and nothing else runs)."""
    ablations = app.query_one(Ablations)
    return lambda: (
        app.result is not None
        and not app.workers
        and (not app.session.interventions or ablations.effect is not None or "not run" in str(ablations.render()))
    )


def leaf_label(app: AttnScopeApp, layer: int, head: int) -> str:
    nav = app.query_one(Navigator)
    node = next(n for n in nav.root.children if n.data[1] == layer)
    return next(str(leaf.label) for kv in node.children for leaf in kv.children if leaf.data[2] == head)


# ---- the core -------------------------------------------------------------------------------------
def test_toggle_head_adds_joins_and_takes_out():
    ivs = toggle_head([], 1, 2, 8, 2)
    assert ivs == [Intervention("zero", 1, (2,))]
    ivs = toggle_head(ivs, 1, 5, 8, 2)
    assert ivs == [Intervention("zero", 1, (2, 5))]  # one zero per layer
    assert toggle_head(toggle_head(ivs, 1, 2, 8, 2), 1, 5, 8, 2) == []
    # a head that another intervention acts on is taken out of it, which then names the heads left
    assert toggle_head([Intervention.parse("mean@0")], 0, 3, 8, 2) == [Intervention("mean", 0, (0, 1, 2, 4, 5, 6, 7))]
    assert toggle_head([Intervention.parse("zero@0:kv1")], 0, 5, 8, 2) == [Intervention("zero", 0, (4, 6, 7))]
    assert acted_on([Intervention.parse("zero@0:kv1"), Intervention("zero", 2, (1,))], 8, 2) == {
        (0, 4),
        (0, 5),
        (0, 6),
        (0, 7),
        (2, 1),
    }


def test_session_intervene_is_the_run_with_the_head_zeroed_and_its_effect_is_effects():
    from attnscope.errors import UserError
    from attnscope.scope import Scope
    from attnscope.session import Session

    session = Session(str(sample("tiny-code")), device="cpu")
    baseline = session.run(PROMPT, max_new_tokens=4)
    session.interventions = [Intervention("zero", 1, (2,))]
    intervened = session.intervene(baseline.ids, max_new_tokens=4)
    out = intervened.result.records[1].out
    assert torch.count_nonzero(out[:, 2]) == 0 and torch.count_nonzero(out[:, 3]) > 0
    assert torch.equal(intervened.result.records[0].out, baseline.records[0].out)  # before the head: the same
    # A of the comparison is the run without it: the baseline, bit for bit; B the run with it
    assert torch.equal(intervened.comparison.run_a.logits, baseline.run.logits)
    assert intervened.comparison.run_b is intervened.result.run
    assert intervened.comparison.first_divergence()["layer"] == 1
    scope = Scope(session.load(), backend=session.backend)
    direct = effect(scope.model, scope.attend, torch.tensor([baseline.ids]), session.interventions, new_tokens=4)
    assert intervened.effect.to_dict() == direct.to_dict()
    with pytest.raises(UserError, match="checks test the model as it is"):
        scope.run(PROMPT, checks="nan", interventions=session.interventions)
    with pytest.raises(UserError, match="layer must be in 0..3"):
        scope.run(PROMPT, interventions=[Intervention("zero", 9, (0,))])


# ---- the app --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
async def test_a_ablates_the_head_shown_and_a_again_restores_the_baseline(size):
    app = AttnScopeApp(model="tiny-code", prompt=PROMPT, device="cpu", max_new_tokens=4)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, settled(app))
        baseline, checks = app.result, list(app.result.checks)
        app.show_head(0, 0)  # from L0 h0 (the app opens on the most focused head)
        app.query_one(HeatmapView).focus()
        await pilot.press("right_curly_bracket", "right_square_bracket", "right_square_bracket")  # L1 h2
        assert (app.query_one(HeatmapView).layer_idx, app.query_one(HeatmapView).head_idx) == (1, 2)
        await pilot.press("a")
        await wait_for(pilot, settled(app))
        ablations = app.query_one(Ablations)
        assert app.session.interventions == [Intervention("zero", 1, (2,))]
        shown = app.result
        assert shown is not baseline and torch.count_nonzero(shown.records[1].out[:, 2]) == 0
        # the effect is `effect`'s on the same tokens, and the line says it
        ids, interventions = torch.tensor([baseline.ids]), app.session.interventions
        direct = effect(baseline.run.model, baseline.run.attend, ids, interventions, new_tokens=4)
        assert ablations.effect.to_dict() == direct.to_dict()
        line = str(ablations.render())
        assert ablations.display and line.startswith("⊘ zero@1:2 · logits max |Δ| ")
        assert f"{direct.logits_max_abs_diff:.3g}" in line and "attention changes from L1" in line
        # the navigator marks the head and its layer, and keeps the baseline's checks
        assert "⊘" in leaf_label(app, 1, 2) and "⊘" not in leaf_label(app, 1, 3)
        view = app.query_one(HeatmapView)
        assert view.renderable().title.endswith("· ⊘ output replaced") and (1, 2) in view.acted_on
        assert [str(n.label).startswith("L1 ⊘") for n in app.query_one(Navigator).root.children] == [
            False,
            True,
            False,
            False,
        ]
        assert app.sub_title.endswith("· zero@1:2")
        # the Diff tab compares the run with the ablation with the run without it; Tokens shows its continuation
        diff = app.query_one(DiffPane)
        assert diff.result is shown and diff.comparison.run_b is shown.run and diff.versus == "the run without zero@1:2"
        assert app.query_one(TokensPane).result is shown
        await pilot.press("4")
        await wait_for(pilot, lambda: app.query_one(TabbedContent).active == "diff")
        await pilot.pause()
        app.query_one(HeatmapView).focus()
        # again: restored, the baseline as it was (no run needed)
        await pilot.press("a")
        await wait_for(pilot, settled(app))
        assert app.session.interventions == [] and app.result is baseline and app.result.checks == checks
        assert not ablations.display and "⊘" not in leaf_label(app, 1, 2)
        assert "⊘" not in app.query_one(HeatmapView).renderable().title
        assert app.query_one(DiffPane).versus is None and app.query_one(TokensPane).result is baseline
        assert "zero" not in app.sub_title


async def test_capital_a_restores_every_head_and_a_new_prompt_keeps_the_ablation():
    app = AttnScopeApp(model="tiny-code", prompt=PROMPT, device="cpu", max_new_tokens=2)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, settled(app))
        baseline = app.result
        app.show_head(0, 0)  # from L0 h0 (the app opens on the most focused head)
        app.query_one(HeatmapView).focus()
        await pilot.press("a")  # L0 h0: the continuation's second token changes, the Tokens tab says from what
        await wait_for(pilot, settled(app))
        tokens = app.query_one(TokensPane)
        assert app.query_one(Ablations).effect.continuation_change == 1
        was = baseline.token_texts([baseline.continuation_ids[1]])[0]
        assert str(tokens.get_row("c1")[3]) == f"without: {TokensPane.shown(was)}"
        assert str(tokens.get_row("c0")[3]) == "n adds it"  # the same token as without
        await pilot.press("right_square_bracket", "a")  # and h1: one zero of the layer
        await wait_for(pilot, settled(app))
        assert app.session.interventions == [Intervention("zero", 0, (0, 1))]
        assert torch.count_nonzero(app.result.records[0].out[:, :2]) == 0
        # ctrl+r: the prompt runs again (with its checks), then with the ablated heads
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.result is not baseline and app.result is not None)
        await wait_for(pilot, settled(app))
        assert app.query_one(Ablations).effect is not None
        assert torch.count_nonzero(app.result.records[0].out[:, :2]) == 0 and "⊘" in leaf_label(app, 0, 1)
        rerun = app.query_one(Ablations).baseline[0]
        assert rerun.checks and torch.equal(rerun.run.logits, baseline.run.logits)
        await pilot.press("A")
        await wait_for(pilot, settled(app))
        assert app.session.interventions == [] and app.result is rerun
        assert "without" not in str(app.query_one(TokensPane).get_row("c1")[3])
        assert "⊘" not in leaf_label(app, 0, 0) and "⊘" not in leaf_label(app, 0, 1)


async def test_tui_intervene_starts_with_them_and_a_bad_one_is_said_and_exits_2():
    app = AttnScopeApp(model="tiny-code", prompt=PROMPT, device="cpu", interventions=[Intervention.parse("mean@2:kv1")])
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, settled(app))
        assert app.query_one(Ablations).effect is not None
        assert all("⊘" in leaf_label(app, 2, h) for h in range(4, 8)) and "⊘" not in leaf_label(app, 2, 3)
        app.show_head(0, 0)  # from L0 h0 (the app opens on the most focused head)
        app.query_one(HeatmapView).focus()
        await pilot.press("right_curly_bracket", "right_curly_bracket")  # L2 h0: not acted on; `a` adds a zero
        await pilot.press("a")
        await wait_for(pilot, settled(app))
        assert app.session.interventions == [Intervention.parse("mean@2:kv1"), Intervention("zero", 2, (0,))]
        await pilot.press("q")
    assert app.return_code == 0

    app = AttnScopeApp(model="tiny-code", prompt=PROMPT, device="cpu", interventions=[Intervention("zero", 7, (0,))])
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, settled(app))
        assert "not run: intervention zero@7:0: layer must be in 0..3" in str(app.query_one(Ablations).render())
        await pilot.press("q")
    assert app.return_code == 2


def test_the_tui_command_refuses_a_bad_intervention_before_it_starts():
    from typer.testing import CliRunner

    from attnscope.cli import app as cli

    out = CliRunner().invoke(cli, ["tui", "-p", "x", "--intervene", "zero@x"])
    assert out.exit_code == 2 and "--intervene must read KIND@LAYER[:HEADS]" in out.output
    out = CliRunner().invoke(cli, ["tui", "-p", "x", "--intervene", "patch@1"])
    assert out.exit_code == 2 and "patch takes another model's attention" in out.output
