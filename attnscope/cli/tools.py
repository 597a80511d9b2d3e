"""The other commands: `mask`, `tui`, `heads` and `models`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnscope.cli.app import app
from attnscope.cli.common import (
    EXIT_OK,
    FLAGS,
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    ModelOpt,
    PickleOpt,
    QuietOpt,
    fail,
    load,
    parse_interventions,
    user_errors,
    validate_outputs,
)


@app.command()
def mask(
    q_len: Annotated[int, typer.Option("--q-len", "-q", help="Query rows (new tokens).")],
    k_len: Annotated[
        int | None, typer.Option("--k-len", "-k", help="Keys incl. cache (default: q-len); past = k-len - q-len.")
    ] = None,
    window: Annotated[int | None, typer.Option("--window", help="Causal sliding window size.")] = None,
    pad: Annotated[int, typer.Option("--padding", help="Padding positions of the sequence.")] = 0,
    side: Annotated[str, typer.Option("--side", help="Padding side: left or right.")] = "right",
    prefix: Annotated[
        int | None,
        typer.Option("--prefix", help="Prefix-LM: bidirectional over the first N positions (instead of causal)."),
    ] = None,
    documents: Annotated[
        str | None,
        typer.Option(
            "--documents", help="Comma-separated document id of each of the k-len positions (packed sequences)."
        ),
    ] = None,
    chunk: Annotated[int | None, typer.Option("--chunk", help="Attend only within chunks of N positions.")] = None,
    block: Annotated[
        str | None, typer.Option("--block", help="Show the tile map of an MxN block grid, e.g. 4x4.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the grid.")] = False,
) -> None:
    """Show the mask that a combination of mask parts gives (causal unless --prefix)."""
    k_len = q_len if k_len is None else k_len
    if q_len < 1:
        raise fail(f"--q-len must be >= 1 (a mask has at least one query row), got {q_len}")
    if q_len > k_len:
        raise fail(f"--q-len {q_len} > --k-len {k_len}: queries are the last q-len of the k-len positions")
    doc_ids = block_size = None
    try:
        doc_ids = None if documents is None else [int(x) for x in documents.split(",")]
    except ValueError:
        raise fail(f"--documents must be comma-separated integers, got {documents!r}") from None
    if block is not None:
        try:
            block_size = tuple(int(x) for x in block.lower().split("x"))
            assert len(block_size) == 2 and min(block_size) >= 1
        except (ValueError, AssertionError):
            raise fail(f"--block must look like 4x4 (positive sizes), got {block!r}") from None

    from attnscope import masks
    from attnscope.errors import ArgumentError

    try:  # a mask larger than a summary reads is refused here, before anything is drawn
        spec = masks.from_parts(
            k_len, window=window, padding_count=pad, side=side, prefix=prefix, documents=doc_ids, chunk=chunk
        )
        masks.validate_scan(spec, q_len, k_len, block_size)
    except ArgumentError as exc:
        raise fail(exc.message_for(FLAGS)) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if as_json:
        import json

        typer.echo(json.dumps(masks.summary(spec, q_len, k_len, block_size), indent=2))
        return
    from attnscope.render.console import console
    from attnscope.render.maskgrid import mask_view

    console().print(mask_view(spec, q_len, k_len, block=block_size))


@app.command()
def tui(
    model: ModelOpt = "tiny-code",
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Prompt to run at start (else the app asks for one).")
    ] = None,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Continuation shown in the Tokens tab.")
    ] = 8,
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    compare_with: Annotated[
        str | None,
        typer.Option(
            "--compare", help="A second model B: the Diff tab shows where its attention parts ways with this one's."
        ),
    ] = None,
    intervene: Annotated[
        list[str],
        typer.Option(
            "--intervene",
            help="KIND@LAYER[:HEADS] (repeatable): start with these heads' attention output replaced (zero, "
            "mean, reference; hide[LO:HI] masks keys LO..HI-1), as the key a ablates a head.",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Browse every layer, head and token in a terminal app while the model runs."""
    interventions = parse_interventions(intervene, patch=False)
    if not all(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr)):  # Textual draws on stderr
        raise fail(
            "attnscope tui needs a terminal: stdin, stdout and stderr must be a tty (for a report "
            "without one, use attnscope run or attnscope check)"
        )
    with user_errors():
        from attnscope.backends import validate_backend
        from attnscope.model.loader import resolve_dtype, validate_engine
        from attnscope.session import resolve_device

        validate_backend(backend)
        resolve_dtype(dtype)
        validate_engine(engine)
        from attnscope.tui.app import AttnScopeApp

        tui_app = AttnScopeApp(
            model=model,
            prompt=prompt,
            backend=backend,
            dtype=dtype,
            device=resolve_device(device),
            max_new_tokens=max_new_tokens,
            allow_pickle=allow_pickle,
            engine=engine,
            compare=compare_with,
            interventions=interventions,
        )
        tui_app.run()
    raise typer.Exit(tui_app.return_code or EXIT_OK)


@app.command()
def heads(
    model: ModelOpt = "tiny-code",
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            "-p",
            help="Also score the heads on this text (previous-token, sink, local, broad); "
            "the roles are measured on the repeated random sequence whatever the text.",
        ),
    ] = None,
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (with roles) here.")] = None,
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Score every head (induction, previous-token, sink, local, broad) and name its role."""
    validate_outputs(("--json", json_path))
    with user_errors():
        from attnscope.inspector.heads import MIN_KEYS, MIN_ROWS
        from attnscope.output import write_outputs
        from attnscope.render.console import console, stage_bars
        from attnscope.render.tables import roles_table
        from attnscope.scope import Scope

        with stage_bars(quiet) as bars:
            loaded = load(model, dtype, device, allow_pickle, engine, bars)
            scope = Scope(loaded, backend=backend)
            report = scope.run(prompt if prompt is not None else scope.role_probe(), roles=True, progress=bars).report()
        write_outputs([("--json", json_path, report.to_json() if json_path else "")])
    n_probe = (len(scope.role_probe()) - (loaded.layout.bos_token_id is not None)) // 2
    out = console()
    out.print(f"[bold]{loaded.name}[/bold] · roles measured on a random sequence of {n_probe} tokens repeated twice")
    on_prompt = prompt is not None
    if on_prompt and not any(h.prompt_scores for layer in report.layers for h in layer.heads):
        out.print(
            f"the prompt has {len(report.tokens)} tokens: too few to score the heads on it (a score needs "
            f"{MIN_ROWS} rows with at least {MIN_KEYS} keys: {MIN_KEYS + MIN_ROWS - 1} tokens)",
            markup=False,
        )
    out.print(roles_table(report, on_prompt=on_prompt))


@app.command()
def models() -> None:
    """List the bundled sample models (the trained ones and the broken variants)."""
    from attnscope.render.console import console
    from attnscope.render.tables import models_table

    console().print(models_table())
