"""Messages the run worker and the widgets send to the app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from attnscope.inspector.compare import Comparison
    from attnscope.inspector.report import Check
    from attnscope.inspector.result import Result
    from attnscope.session import Intervened


@dataclass
class LayerArrived(Message):
    """A layer's attention record was captured (the forward pass reached `layer`)."""

    layer: int
    n_layers: int
    run_id: int


@dataclass
class CheckFinished(Message):
    """A check finished."""

    check: Check
    run_id: int


@dataclass
class ResultReady(Message):
    """The forward and the continuation are done: `result` can be drawn; its checks, diffs and head
    roles are still running (they come with `RunFinished`)."""

    result: Result
    run_id: int


@dataclass
class StageStarted(Message):
    """The run moved on to `stage` (a check's name, "statistics", "roles", ...: `Scope.run`'s progress)."""

    stage: str
    run_id: int


@dataclass
class RunFinished(Message):
    """The run and its checks are done; `comparison` is the one against the ``--compare`` model (or
    the reason it could not be made; None without one)."""

    result: Result
    run_id: int
    comparison: Comparison | str | None = None


@dataclass
class RunFailed(Message):
    """The run stopped on an error: one a user can fix (bad model path, bad prompt, ...; exit code
    2) or any other (exit code 1)."""

    error: str
    run_id: int
    exit_code: int = 2


@dataclass
class InterventionsRan(Message):
    """The prompt ran with the session's interventions (the ablated heads): that run, its comparison
    with the run without them, their effect."""

    intervened: Intervened
    run_id: int


@dataclass
class InterventionsFailed(Message):
    """The run with the interventions stopped on an error (one a user can fix, such as an intervention
    outside the model: exit code 2; any other: 1)."""

    error: str
    run_id: int
    exit_code: int = 2


@dataclass
class CursorMoved(Message):
    """The heatmap's cell cursor moved; `info` describes the cell for the details panel."""

    info: str


@dataclass
class JumpTo(Message):
    """A pane chose a place to show in the heatmap (a check's worst place, a prompt token): None
    keeps the layer and head shown."""

    layer: int | None
    head: int | None
    position: int | None
