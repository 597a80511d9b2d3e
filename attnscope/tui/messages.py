"""Messages the run worker and the widgets send to the app."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class LayerArrived(Message):
    """A layer's attention record was captured (the forward pass reached `layer`)."""

    layer: int
    n_layers: int
    run_id: int


@dataclass
class CheckFinished(Message):
    """A check finished; `check` is an `attnscope.inspector.report.Check`."""

    check: object
    run_id: int


@dataclass
class RunFinished(Message):
    """The run and its checks are done; `result` is an `attnscope.scope.Result`, `comparison` the
    `attnscope.inspector.compare.Comparison` against the ``--compare`` model (or the error that stopped
    it; None without one)."""

    result: object
    run_id: int
    comparison: object = None


@dataclass
class RunFailed(Message):
    """The run stopped on an error: one a user can fix (bad model path, bad prompt, ...; exit code
    2) or any other (exit code 1)."""

    error: str
    run_id: int
    exit_code: int = 2


@dataclass
class CursorMoved(Message):
    """The heatmap's cell cursor moved; `info` describes the cell for the details panel."""

    info: str
