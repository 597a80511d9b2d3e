"""The commands that inspect a model on prompts: `run` and `check` (`compare` has its own module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnscope.cli.app import app
from attnscope.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AtolOpt,
    BackendOpt,
    ChecksOpt,
    ColorOpt,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    HtmlOpt,
    JunitOpt,
    ModelOpt,
    PickleOpt,
    PromptListOpt,
    PromptsFileOpt,
    QuietOpt,
    RtolOpt,
    SvgOpt,
    counted,
    fail,
    findings,
    load,
    parse_check_names,
    read_prompts,
    user_errors,
    validate_outputs,
    validate_place,
    validate_tolerances,
)


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to run through the model.")],
    model: ModelOpt = "tiny-code",
    backend: BackendOpt = "auto",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Greedy continuation length (decoded with the KV cache).")
    ] = 24,
    layer: Annotated[int | None, typer.Option("--layer", "-l", help="Layer of the heatmap.")] = None,
    head: Annotated[
        int | None,
        typer.Option(
            "--head",
            help="Query head of the heatmap (default: the most focused head: the most weight on one key "
            "other than token 0, the query itself and the previous token).",
        ),
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option("--heads", help="'all': small multiples of every head of the layer instead of one heatmap."),
    ] = None,
    query: Annotated[
        int | None, typer.Option("--query", "-q", help="Also list the top keys of this query position.")
    ] = None,
    scale: Annotated[str, typer.Option("--scale", help="Heatmap color scale: linear or log.")] = "linear",
    checks: ChecksOpt = "all",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    svg: SvgOpt = None,
    html: HtmlOpt = None,
    color: ColorOpt = "auto",
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run a prompt: its tokens, continuation, attention statistics per layer and head, checks, a heatmap."""
    validate_outputs(("--json", json_path), ("--svg", svg), ("--html", html))
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if scale not in ("linear", "log"):
        raise fail(f"--scale must be linear or log, got {scale!r}")
    if heads not in (None, "all"):
        raise fail(f"--heads takes 'all', got {heads!r}")
    check_names = parse_check_names(checks)
    validate_tolerances(atol, rtol)
    with user_errors():
        from attnscope.inspector.report import pick_head
        from attnscope.output import write_outputs
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.render.run_view import run_view
        from attnscope.scope import Scope

        console = output_console(color)
        with stage_bars(quiet) as bars:
            loaded = load(model, dtype, device, allow_pickle, engine, bars)
            scope = Scope(loaded, backend=backend)
            validate_place(scope, prompt, layer, head, query)
            result = scope.run(
                prompt,
                max_new_tokens=max_new_tokens,
                checks=check_names,
                atol=atol,
                rtol=rtol,
                roles=True,
                progress=bars,
            )
            report = result.report()
        layer, head, why = pick_head(report, layer, head)
        parts = run_view(
            result,
            report,
            layer,
            head,
            why,
            width=console.width,
            every_head=heads == "all",
            log=scale == "log",
            query=query,
        )
        write_outputs(
            [
                ("--json", json_path, report.to_json() if json_path else ""),
                *exports(console, parts, svg, html, title=f"attnscope run · {loaded.name}"),
            ]
        )
    emit(console, parts)
    raise typer.Exit(EXIT_OK if report.passed else EXIT_FAILED)


# ---- options checked before any work (outputs, tolerances, prompts) and against the model's layout


@app.command()
def check(
    prompt: PromptListOpt = [],  # noqa: B006
    prompts_file: PromptsFileOpt = None,
    model: ModelOpt = "tiny-code",
    backend: Annotated[
        list[str],
        typer.Option("--backend", "-b", help="Backend to check (repeatable): auto, eager, sdpa, flex, triton."),
    ] = ["auto"],  # noqa: B006
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    checks: ChecksOpt = "all",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report(s) as JSON here.")] = None,
    junit_path: JunitOpt = None,
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run checks for every prompt and backend; exit 0 if all pass, 1 if any fails, 2 on bad input."""
    validate_outputs(("--json", json_path), ("--junit", junit_path))
    check_names = parse_check_names(checks)
    validate_tolerances(atol, rtol)
    prompt_list = read_prompts(prompt, prompts_file)
    runs = []  # (prompt index, prompt, backend, report)
    with user_errors():
        from attnscope.backends import validate_backend
        from attnscope.inspector.report import report_set
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.console import console, stage_bars
        from attnscope.scope import Scope

        for name in backend:
            validate_backend(name)  # an unknown or unavailable backend is bad input: fail before any work
        with stage_bars(quiet) as bars:
            loaded = load(model, dtype, device, allow_pickle, engine, bars)
            scopes = [Scope(loaded, backend=name) for name in backend]
            for prompt_text in prompt_list:  # validate every prompt before running anything
                scopes[0].encode(prompt_text)
            total = len(prompt_list) * len(scopes)
            for n, prompt_text in enumerate(prompt_list):
                for scope in scopes:
                    if bars is not None:
                        bars.clear(keep=("loading", "runs"))
                        if total > 1:
                            bars(len(runs), total, "runs")
                            bars.describe("runs", f"{scope.backend}: {prompt_text[:40]!r}")
                    result = scope.run(prompt_text, checks=check_names, atol=atol, rtol=rtol, progress=bars)
                    runs.append((n, prompt_text, scope.backend, result.report()))
        checked = [(n, p, b, r.checks) for n, p, b, r in runs]
        junit = junit_xml(checked) if junit_path else ""
        write_outputs(
            [
                ("--json", json_path, report_set([r for *_, r in runs]) if json_path else ""),
                ("--junit", junit_path, junit),
            ]
        )
    out = console()
    title = (
        f"attnscope check · {loaded.name} · {dtype} · {counted(len(prompt_list), 'prompt')} × "
        f"{counted(len(scopes), 'backend')}"
    )
    parts, passed = findings(checked, title)
    for part in parts:
        out.print(part)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)
