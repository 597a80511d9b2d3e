"""The typer application every command registers with."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="attnscope",
    help="A debugger and microscope for attention in causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _flag_takes_no_value() -> None:
    """`--help` lists a flag without a type: typer's rich help writes "<bool>" after --allow-pickle,
    --json and --help as if they took a value."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)  # typer versions without it write no "<bool>"
    if shown is not None:
        TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flag_takes_no_value()
