"""The commands that inspect a model on prompts: `run`, `check` and `compare`."""

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
    fail,
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
        f"attnscope check · {loaded.name} · {dtype} · {_count(len(prompt_list), 'prompt')} × "
        f"{_count(len(scopes), 'backend')}"
    )
    parts, passed = _findings(checked, title)
    for part in parts:
        out.print(part)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def _findings(runs, title: str) -> tuple[list, bool]:
    """What `check` and `compare` print of their runs, given as (prompt index, prompt, backend,
    checks): the checks grouped by run, then the count of passed and failed ones; and whether all
    passed."""
    from rich.text import Text

    from attnscope.render.checks import ChecksView

    n_checks = sum(len(checks) for *_, checks in runs)
    n_failed = sum(not c.passed for *_, checks in runs for c in checks)
    n_skipped = sum(c.skipped is not None for *_, checks in runs for c in checks)
    summary = Text(
        f"{n_checks - n_failed - n_skipped} passed, {n_failed} failed"
        + (f", {n_skipped} skipped" if n_skipped else ""),
        style="bold red" if n_failed else "green",
    )
    return [ChecksView([(n, b, p, checks) for n, p, b, checks in runs], title=title), summary], not n_failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@app.command()
def compare(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="A B",
            help="The two models, A (the reference) then B: sample model names, Hugging Face model "
            "directories or GGUF files (or give each with --model).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="A model, as the arguments A and B (twice: A, then B)."),
    ] = [],  # noqa: B006
    prompt: PromptListOpt = [],  # noqa: B006
    prompts_file: PromptsFileOpt = None,
    backend: BackendOpt = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="The dtype of both models: float32, float16 or bfloat16.")
    ] = "float32",
    dtype_a: Annotated[
        str | None, typer.Option("--dtype-a", help="Model A's dtype (default: --dtype).", show_default=False)
    ] = None,
    dtype_b: Annotated[
        str | None,
        typer.Option("--dtype-b", help="Model B's dtype (default: --dtype), e.g. B bfloat16 against A float32."),
    ] = None,
    device: DeviceOpt = "auto",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the comparison as JSON here (schema attnscope.compare/1).")
    ] = None,
    junit_path: JunitOpt = None,
    svg: SvgOpt = None,
    color: ColorOpt = "auto",
    allow_pickle: PickleOpt = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="The engine of both models: native (attnscope's Llama-family model), hf (the transformers "
            "model) or auto (native for llama, mistral, qwen2 and qwen3, else hf).",
        ),
    ] = "auto",
    engine_a: Annotated[
        str | None, typer.Option("--engine-a", help="Model A's engine (default: --engine).", show_default=False)
    ] = None,
    engine_b: Annotated[
        str | None, typer.Option("--engine-b", help="Model B's engine (default: --engine).", show_default=False)
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Where model B's attention parts ways with model A's, per layer and head, on the same tokens. \
Each model runs in its own dtype and engine (--dtype-b, --engine-b; --dtype and --engine set both). \
Two runs equal bit for bit print one line, "identical: ...". \
Exit 0 if nothing crosses the tolerance (identical included), 1 if something does, 2 on bad input."""
    validate_outputs(("--json", json_path), ("--junit", junit_path), ("--svg", svg))
    validate_tolerances(atol, rtol)
    names = [*(models or []), *model]
    if len(names) != 2:
        raise fail(f"give two models, A (the reference) then B: `compare A B` or --model A --model B; got {len(names)}")
    settings = [
        (dtype if dtype_a is None else dtype_a, engine if engine_a is None else engine_a),
        (dtype if dtype_b is None else dtype_b, engine if engine_b is None else engine_b),
    ]
    validate_model_settings(dtype, dtype_a, dtype_b, engine, engine_a, engine_b)
    prompt_list = read_prompts(prompt, prompts_file)
    with user_errors():
        from rich.text import Text

        from attnscope.backends import validate_backend
        from attnscope.inspector.compare import compare_document, require_same_layout
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.compare_view import compare_view, identical_line, models_line
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.scope import compare as compare_models

        validate_backend(backend)  # an unknown or unavailable backend fails before any work
        out = output_console(color)
        a, b = (load(name, dt, device, allow_pickle, eng) for name, (dt, eng) in zip(names, settings, strict=True))
        require_same_layout(a.layout, b.layout, (a.name, b.name) if a.name != b.name else ("A", "B"))
        comparisons = []
        with stage_bars(quiet) as bars:
            for n, text in enumerate(prompt_list):
                if bars is not None:
                    bars(n, len(prompt_list), "compare")
                    bars.describe("compare", f"comparing {text[:40]!r}")
                comparisons.append(compare_models(a, b, text, backend=backend, atol=atol, rtol=rtol))
        checked = [(n, p, c.backend, c.checks()) for n, (p, c) in enumerate(zip(prompt_list, comparisons, strict=True))]
        identical = all(c.identical for c in comparisons)
        if identical:
            parts: list = [identical_line(comparisons)]
            passed = True
        else:
            header = f"{models_line(comparisons[0])} · {comparisons[0].backend} · {a.device}"
            parts = [Text(header, style="bold"), Text()]
            for c in comparisons:
                parts += [*compare_view(c, width=out.width), Text()]
            title = f"attnscope compare · {header} · {_count(len(prompt_list), 'prompt')}"
            findings, passed = _findings(checked, title)
            parts += findings
        write_outputs(
            [
                ("--json", json_path, compare_document(comparisons) if json_path else ""),
                ("--junit", junit_path, junit_xml(checked, "attnscope.compare") if junit_path else ""),
                *exports(out, parts, svg, None, title=f"attnscope compare · {b.name} vs {a.name}"),
            ]
        )
    if identical:
        out.print(parts[0], soft_wrap=True)  # one line, for logs and greps
    else:
        emit(out, parts)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def validate_model_settings(
    dtype: str, dtype_a: str | None, dtype_b: str | None, engine: str, engine_a: str | None, engine_b: str | None
) -> None:
    """Each dtype and engine option of `compare` names a known one (a bad one is named by its flag)."""
    from attnscope.errors import UserError
    from attnscope.model.loader import ENGINES, resolve_dtype

    for flag, value in (("--dtype", dtype), ("--dtype-a", dtype_a), ("--dtype-b", dtype_b)):
        if value is not None:
            try:
                resolve_dtype(value)
            except UserError as exc:
                raise fail(f"{flag}: {exc}") from None
    for flag, value in (("--engine", engine), ("--engine-a", engine_a), ("--engine-b", engine_b)):
        if value is not None and value not in ENGINES:
            raise fail(f"{flag}: unknown engine {value!r} (choose from: {', '.join(ENGINES)})")
