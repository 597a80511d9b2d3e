"""The run workers' bodies: a session's run of one prompt, told to the app as messages
(`attnscope.tui.messages`) as its parts exist: each layer's record, the drawable result (before the
checks), the stage that runs, each check, and the finished run or its failure; and the run of the
same tokens with the session's interventions (`intervene_and_post`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnscope.errors import UserError, one_line
from attnscope.tui import messages


class Cancelled(Exception):
    """Raised inside the worker's callbacks when its run was superseded."""


def run_and_post(
    session, prompt, run_id: int, max_new_tokens: int, post_message: Callable[[Any], Any], cancelled: Callable[[], bool]
) -> None:
    """Run `prompt` with every check and the head roles (and the comparison of ``--compare``), posting
    what arrives with `post_message` until `cancelled()` (then the next callback stops the run)."""

    def post(message) -> None:  # the callbacks of a superseded run stop it
        if cancelled():
            raise Cancelled
        if message is not None:
            post_message(message)

    started = {"forward", "decode"}  # the stages the status line follows otherwise

    def progress(done, total, stage: str) -> None:  # says which stage runs (at its first call)
        if stage not in started:
            started.add(stage)
            post(messages.StageStarted(stage, run_id))

    try:
        n_layers = session.prepare().layout.n_layers  # model B (--compare) too: a bad B fails here
        post(None)
        result, comparison = session.run_and_compare(  # a refused comparison: shown in the Diff tab
            prompt,
            max_new_tokens=max_new_tokens,
            checks="all",
            roles=True,
            on_layer=lambda layer: post(messages.LayerArrived(layer, n_layers, run_id)),
            on_check=lambda check: post(messages.CheckFinished(check, run_id)),
            on_ready=lambda result: post(messages.ResultReady(result, run_id)),
            progress=progress,
        )
        post(messages.RunFinished(result, run_id, comparison))
    except Cancelled:
        return
    except UserError as exc:
        post_message(messages.RunFailed(str(exc), run_id, exit_code=2))
    except Exception as exc:  # a bug, not bad input: one line in the app too, and exit code 1
        post_message(messages.RunFailed(one_line(exc), run_id, exit_code=1))


def intervene_and_post(
    session, ids: list[int], run_id: int, max_new_tokens: int, post_message: Callable[[Any], Any], cancelled
) -> None:
    """Run `ids` with and without the session's interventions (`Session.intervene`) and post the
    outcome, unless `cancelled()` (checked at every layer: a superseded run stops there)."""

    def check(_layer: int) -> None:
        if cancelled():
            raise Cancelled

    try:
        intervened = session.intervene(ids, max_new_tokens, on_layer=check)
        if not cancelled():
            post_message(messages.InterventionsRan(intervened, run_id))
    except Cancelled:
        return
    except UserError as exc:
        post_message(messages.InterventionsFailed(str(exc), run_id, exit_code=2))
    except Exception as exc:
        post_message(messages.InterventionsFailed(one_line(exc), run_id, exit_code=1))
