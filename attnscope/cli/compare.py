"""`attnscope compare`: where model B's attention parts ways with model A's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import attnscope.cli.inspect  # noqa: F401  (help lists commands as registered: run and check first)
from attnscope.cli.app import app
from attnscope.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AtolOpt,
    BackendOpt,
    ColorOpt,
    DeviceOpt,
    HtmlOpt,
    HtmlTerminalOpt,
    JunitOpt,
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
    parse_interventions,
    read_prompts,
    user_errors,
    validate_outputs,
    validate_tolerances,
    validate_top1,
)


@app.command()
def compare(
    ctx: typer.Context,
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
    width: WidthOpt = None,
    html: HtmlOpt = None,
    html_terminal: HtmlTerminalOpt = None,
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
    bisect: Annotated[
        bool,
        typer.Option(
            "--bisect",
            help="Also find the layers whose attention, taken from A, brings B's greedy tokens back to A's "
            "(`attnscope bisect` is compare with --bisect).",
        ),
    ] = False,
    top1: Top1Opt = 1.0,
    intervene: Annotated[
        list[str],
        typer.Option(
            "--intervene",
            help="KIND@LAYER[:HEADS] (repeatable): also run B with these heads' attention output replaced, "
            "patch@LAYER[:HEADS] by A's on the same tokens (or zero, mean, reference, hide[LO:HI]), and show "
            "what changed in B's output and how far it is from A's.",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Where model B's attention parts ways with model A's, per layer and head, on the same tokens. \
Each model runs in its own dtype and engine (--dtype-b, --engine-b; --dtype and --engine set both). \
Two runs equal bit for bit print one line, "identical: ...". \
Exit 0 if nothing crosses the tolerance (identical included), 1 if something does, 2 on bad input."""
    validate_outputs(
        ("--json", json_path),
        ("--junit", junit_path),
        ("--svg", svg),
        ("--html", html),
        ("--html-terminal", html_terminal),
    )
    validate_tolerances(atol, rtol)
    bisect = bisect or ctx.info_name == "bisect"
    validate_top1(top1)
    parse_interventions(intervene)
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
        from attnscope.htmlview import comparisons_page
        from attnscope.inspector.compare import compare_document, require_same_layout
        from attnscope.inspector.interventions import bisect_pairs, pair_effects
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.compare_view import (
            bisection_view,
            compare_view,
            identical_line,
            models_line,
            prompt_label,
        )
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.scope import compare as compare_models

        validate_backend(backend)  # an unknown or unavailable backend fails before any work
        out = output_console(color, width, exporting=svg is not None or html_terminal is not None)
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
        bisections = bisect_pairs(a, b, comparisons, top1) if bisect else {}
        effects = pair_effects(a, b, comparisons, parse_interventions(intervene)) if intervene else {}
        experiments = [
            Text(f"intervene · {prompt_label(n, prompt_list[n])}: {found.summary()}") for n, found in effects.items()
        ]
        named = [(f"prompt {n} · {p[:40]!r}", c) for n, (p, c) in enumerate(zip(prompt_list, comparisons, strict=True))]
        identical = all(c.identical for c in comparisons)
        if identical:
            parts: list = [identical_line(comparisons), *experiments]
            passed = True
        else:
            header = f"{models_line(comparisons[0])} · {comparisons[0].backend} · {a.device}"
            parts = [Text(header, style="bold"), Text()]
            for c in comparisons:
                parts += [*compare_view(c, width=out.width), Text()]
            title = f"attnscope compare · {header} · {counted(len(prompt_list), 'prompt')}"
            found, passed = findings(checked, title)
            parts += [*bisection_view(bisections, prompt_list), *experiments, *found]
        write_outputs(
            [
                ("--json", json_path, compare_document(comparisons, bisections, effects) if json_path else ""),
                ("--junit", junit_path, junit_xml(checked, "attnscope.compare") if junit_path else ""),
                ("--html", html, comparisons_page(named, f"attnscope compare · {b.name} vs {a.name}") if html else ""),
                *exports(out, parts, svg, html_terminal, title=f"attnscope compare · {b.name} vs {a.name}"),
            ]
        )
    if identical:
        out.print(parts[0], soft_wrap=True)  # one line, for logs and greps
        emit(out, parts[1:])
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


app.command(
    "bisect",
    help="The layers whose attention makes model B's output differ from model A's: compare with --bisect "
    "(the same options). Patching a layer's attention output from A into B's forward, halves at a time.",
)(compare)
