"""``attnscope check --ranks N``: the check suite spread over N processes that it starts itself.

The command's options are parsed and its prompts read once, here; then N processes (spawned, each
with the environment torchrun would give it: `attnscope.distributed.launch`) each run the `check`
command with the same options and prompts, take their share of the work, and rank 0 writes the
report (`attnscope.distributed.Share`). The exit code is rank 0's: the one a single process gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

RanksOpt = Annotated[
    int,
    typer.Option(
        "--ranks",
        help="Spread the prompts × backends over N processes (gloo on CPU, one GPU each with NCCL); "
        "rank 0 writes the one report. Under torchrun, leave it at 1.",
    ),
]


def run_ranks(ranks: int, command: Callable[..., None], prompts: list[str], options: dict[str, Any]) -> int:
    """The exit code of `command` (the `check` command) whose arguments are in `options` (its
    ``locals()``: those that are its parameters are taken) run over `ranks` processes on `prompts`
    (the prompts read here once: a prompts file on stdin is not read again by each process). Each
    process runs `command` itself (a module-level function, which spawn pickles by name)."""
    import inspect

    from attnscope.distributed import launch

    params = {name: options[name] for name in inspect.signature(command).parameters}
    params.update(ranks=1, prompt=prompts, prompts_file=None)
    return launch(ranks, command, params)
