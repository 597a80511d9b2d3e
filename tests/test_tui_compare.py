"""`attnscope tui --compare B`: model B is loaded and checked (its layout against A's) before the first
run, so a bad B fails that run: one line in the app, the status line says it stopped, and quitting
exits 2. A comparison B refuses on one prompt (another tokenization) is said on the status line and
also leaves exit code 2; a good B leaves 0."""

from __future__ import annotations

from test_tui import PROMPT, wait_for
from textual.widgets import Static

from attnscope.tui.app import AttnScopeApp


async def run_app(model: str, compare: str, prompt: str = PROMPT) -> tuple[int, str, str]:
    """(exit code on quit, the error line, the status line) of the app once its first run is over."""
    app = AttnScopeApp(model=model, prompt=prompt, device="cpu", compare=compare)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: not app.workers and (app.result is not None or app.failure))
        error = str(app.query_one("#error", Static).render()) if app.query_one("#error").has_class("shown") else ""
        status = str(app.query_one("#status", Static).render())
        await pilot.press("q")
    return app.return_code or 0, error, status


async def test_a_missing_model_b_exits_2(tmp_path):
    code, error, status = await run_app("tiny-code", str(tmp_path / "missing"))
    assert code == 2 and "model B (--compare" in error and "not found" in error and "stopped" in status


async def test_a_model_b_of_another_layout_exits_2():
    code, error, _ = await run_app("tiny-code", "tiny-induction")
    assert code == 2 and "different layouts" in error


async def test_an_empty_model_b_exits_2():
    code, error, _ = await run_app("tiny-code", "")
    assert code == 2 and "the model name is empty" in error


async def test_a_good_model_b_exits_0():
    code, error, status = await run_app("tiny-code", "tiny-code-q4")
    assert code == 0 and not error and "all passed" in status


async def test_a_comparison_refused_on_the_prompt_is_on_the_status_line_and_exits_2(monkeypatch):
    from attnscope.errors import UserError

    def refused(self, prompt, atol=None, rtol=None):
        raise UserError("the models tokenize the prompt differently")

    monkeypatch.setattr("attnscope.session.Session.compare", refused)
    code, _, status = await run_app("tiny-code", "tiny-code-q4")
    assert code == 2 and "no comparison: the models tokenize the prompt differently" in status
