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
    HtmlTerminalOpt,
    IncrementalOpt,
    InterveneOpt,
    JunitOpt,
    ModelOpt,
    PickleOpt,
    PromptListOpt,
    PromptsFileOpt,
    QuietOpt,
    RtolOpt,
    SvgOpt,
    Top1Opt,
    WidthOpt,
    counted,
    fail,
    findings,
    load,
    parse_check_names,
    parse_incremental,
    parse_interventions,
    read_prompts,
    user_errors,
    validate_outputs,
    validate_place,
    validate_tolerances,
    validate_top1,
)
from attnscope.cli.ranks import RanksOpt, run_ranks


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
    incremental: IncrementalOpt = "default",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    svg: SvgOpt = None,
    width: WidthOpt = None,
    html: HtmlOpt = None,
    html_terminal: HtmlTerminalOpt = None,
    color: ColorOpt = "auto",
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
    intervene: InterveneOpt = [],  # noqa: B006
) -> None:
    """Run a prompt: its tokens, continuation, attention statistics per layer and head, checks, a heatmap."""
    validate_outputs(("--json", json_path), ("--svg", svg), ("--html", html), ("--html-terminal", html_terminal))
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if scale not in ("linear", "log"):
        raise fail(f"--scale must be linear or log, got {scale!r}")
    if heads not in (None, "all"):
        raise fail(f"--heads takes 'all', got {heads!r}")
    check_names = parse_check_names(checks)
    mode = parse_incremental(incremental)
    validate_tolerances(atol, rtol)
    interventions = parse_interventions(intervene, patch=False)
    with user_errors():
        from rich.text import Text

        from attnscope.htmlview import result_page
        from attnscope.inspector.report import pick_head
        from attnscope.output import write_outputs
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.render.run_view import run_view
        from attnscope.scope import Scope

        console = output_console(color, width, exporting=svg is not None or html_terminal is not None)
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
                incremental=mode.spec,
            )
            report = result.report()
            effects = intervention_effects(scope, result, interventions, max_new_tokens)
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
        parts += [Text(effect.summary()) for effect in effects]
        write_outputs(
            [
                ("--json", json_path, with_effects(report, effects) if json_path else ""),
                ("--html", html, result_page(result, f"attnscope run · {loaded.name}", layer, head) if html else ""),
                *exports(console, parts, svg, html_terminal, title=f"attnscope run · {loaded.name}"),
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
    incremental: IncrementalOpt = "default",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report(s) as JSON here.")] = None,
    junit_path: JunitOpt = None,
    html: HtmlOpt = None,
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
    ranks: RanksOpt = 1,
    bisect: Annotated[
        bool,
        typer.Option(
            "--bisect",
            help="When backend_vs_reference or full_vs_incremental fails: find the layers (then heads) whose "
            "attention, taken from the reference side (the eager reference; the parallel forward), brings the "
            "greedy tokens back.",
        ),
    ] = False,
    top1: Top1Opt = 1.0,
    intervene: InterveneOpt = [],  # noqa: B006
) -> None:
    """Run checks for every prompt and backend; exit 0 if all pass, 1 if any fails, 2 on bad input."""
    validate_outputs(("--json", json_path), ("--junit", junit_path), ("--html", html))
    check_names = parse_check_names(checks)
    mode = parse_incremental(incremental)
    validate_tolerances(atol, rtol)
    validate_top1(top1)
    interventions = parse_interventions(intervene, patch=False)
    prompt_list = read_prompts(prompt, prompts_file)
    if ranks < 1:
        raise fail(f"--ranks must be >= 1, got {ranks}")
    if ranks > 1:
        raise typer.Exit(run_ranks(ranks, check, prompt_list, locals()))
    runs = []  # (prompt index, prompt, backend, report)
    results = []  # (name, Result) for --html
    with user_errors():
        from rich.text import Text

        from attnscope.backends import validate_backend
        from attnscope.distributed import share_from_env
        from attnscope.htmlview import runs_page
        from attnscope.inspector.interventions import bisect_failures
        from attnscope.inspector.report import report_set
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.compare_view import bisection_lines
        from attnscope.render.console import console, stage_bars
        from attnscope.scope import Scope

        share = share_from_env()  # under torchrun or --ranks: this rank's share of the work
        if share.world > 1 and html:
            raise fail("--html needs every run's tensors in one process: it is not available over ranks")
        quiet, device = quiet or not share.root, share.device(device)
        for name in backend:
            validate_backend(name)  # an unknown or unavailable backend is bad input: fail before any work
        with stage_bars(quiet) as bars:
            loaded = load(model, dtype, device, allow_pickle, engine, bars)
            scopes = [Scope(loaded, backend=name) for name in backend]
            for prompt_text in prompt_list:  # validate every prompt before running anything
                scopes[0].encode(prompt_text)
            total = len(prompt_list) * len(scopes)
            for n, prompt_text in enumerate(prompt_list):
                for i, scope in enumerate(scopes):
                    if not share.mine(n * len(scopes) + i):
                        continue
                    if bars is not None:
                        bars.clear(keep=("loading", "runs"))
                        if total > 1:
                            bars(len(runs), total, "runs")
                            bars.describe("runs", f"{scope.backend}: {prompt_text[:40]!r}")
                    result = scope.run(
                        prompt_text, checks=check_names, atol=atol, rtol=rtol, progress=bars, incremental=mode.spec
                    )
                    report = result.report()
                    found = bisect_failures(result.run, report.checks, top1=top1, incremental=mode) if bisect else []
                    effects = intervention_effects(scope, result, interventions)
                    report.interventions = [e.to_dict() for e in effects]
                    runs.append((n, prompt_text, scope.backend, report, (found, effects)))
                    if html:
                        results.append((f"prompt {n} · {scope.backend} · {prompt_text[:40]!r}", result))
        runs = share.gather(runs)  # rank 0: every rank's runs, in the single-process order
        share.close()
        if not share.root:
            raise typer.Exit(EXIT_OK)
        checked = [(n, p, b, r.checks) for n, p, b, r, _ in runs]
        junit = junit_xml(checked) if junit_path else ""
        write_outputs(
            [
                ("--json", json_path, report_set([r for _, _, _, r, _ in runs]) if json_path else ""),
                ("--junit", junit_path, junit),
                ("--html", html, runs_page(results, f"attnscope check · {loaded.name} · {dtype}") if html else ""),
            ]
        )
    out = console()
    title = (
        f"attnscope check · {loaded.name} · {dtype} · {counted(len(prompt_list), 'prompt')} × "
        f"{counted(len(scopes), 'backend')}"
    )
    parts, passed = findings(checked, title)
    experiments: list = []
    for n, _, b, _, (found, effects) in runs:
        for name, bisection in found:
            experiments += bisection_lines(f"bisect · prompt {n} · {b} · {name}", bisection)
        experiments += [Text(f"intervene · prompt {n} · {b}: {e.summary()}") for e in effects]
    for part in [*parts[:-1], *experiments, *parts[-1:]]:  # what the experiments found, before the tally
        out.print(part)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def intervention_effects(scope, result, interventions: list, new_tokens: int = 0) -> list:
    """The `attnscope.inspector.interventions.Effect` of the ``--intervene`` options (`parse_interventions`)
    on the run's first row (and its greedy continuation of `new_tokens`)."""
    if not interventions:
        return []
    from attnscope.errors import ArgumentError
    from attnscope.inspector.interventions import effect

    try:
        return [effect(scope.model, scope.attend, result.run.inputs.ids[:1], interventions, new_tokens=new_tokens)]
    except ArgumentError as exc:
        raise fail(exc.message_for({"intervention": "--intervene"})) from None


def with_effects(report, effects: list) -> str:
    """The report's JSON, with the interventions' effects under ``interventions`` when there are any."""
    report.interventions = [e.to_dict() for e in effects]
    return report.to_json()
