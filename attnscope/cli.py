"""The `attnscope` command line: thin typer commands that parse, call the core and render.

Importing this module imports neither torch nor the core: each command imports what it needs, so
``attnscope --help`` stays fast. Bad input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="attnscope",
    help="A debugger and microscope for attention in causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Sample model name (see `attnscope models`) or a "
                                       "Hugging Face model directory.")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Attention backend: eager, sdpa, flex or triton.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when present).")]
ChecksOpt = Annotated[str, typer.Option("--checks", help="Comma-separated checks to run: nan, masked_rows, "
                                        "full_vs_incremental, backend_vs_reference, causality; 'all' or 'none'.")]
AtolOpt = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance of the comparing checks "
                                               "(default by dtype: float32 1e-5, float16 5e-3, bfloat16 1e-2).")]
RtolOpt = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (default by dtype: float32 1e-4, "
                                               "float16 5e-3, bfloat16 1e-2).")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Accept pickled pytorch_model.bin weights "
                                         "(loaded with torch.load(weights_only=True)).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress on stderr (there is none when stderr is "
                                        "not a terminal).")]


def fail(message: str) -> typer.Exit:
    """Print one line on stderr and return the exit for bad input (raise it)."""
    typer.echo(f"attnscope: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors():
    """Turn the core's UserError (bad paths, files, flags, prompts) into one line and exit code 2."""
    from attnscope.errors import UserError

    try:
        yield
    except UserError as exc:
        raise fail(str(exc)) from None


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load(model: str, dtype: str, device: str, allow_pickle: bool, bars=None):
    """Load a model, its progress on `bars` (`attnscope.render.console.StageBars`) when given."""
    from attnscope.model.loader import load_model

    if bars is not None:
        bars.describe("loading", f"loading {model}")
    progress = None if bars is None else (lambda done, total, what: bars(done, total, "loading"))
    return load_model(model, dtype=dtype, device=_resolve_device(device), allow_pickle=allow_pickle,
                      progress=progress)


ColorOpt = Annotated[str, typer.Option("--color", help="auto (when stdout is a terminal and NO_COLOR is unset), "
                                      "always or never.")]
SvgOpt = Annotated[Path | None, typer.Option("--svg", help="Also save what is printed as SVG here.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also save what is printed as HTML here.")]


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to run through the model.")],
    model: ModelOpt = "tiny-code",
    backend: BackendOpt = "sdpa",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Greedy continuation length "
                                                "(decoded with the KV cache).")] = 24,
    layer: Annotated[int | None, typer.Option("--layer", "-l", help="Layer of the heatmap.")] = None,
    head: Annotated[int | None, typer.Option("--head", help="Query head of the heatmap (default: the head "
                                             "with the lowest mean entropy).")] = None,
    heads: Annotated[str | None, typer.Option("--heads", help="'all': small multiples of every head of the "
                                              "layer instead of one heatmap.")] = None,
    query: Annotated[int | None, typer.Option("--query", "-q", help="Also list the top keys of this query "
                                              "position.")] = None,
    scale: Annotated[str, typer.Option("--scale", help="Heatmap color scale: linear or log.")] = "linear",
    checks: ChecksOpt = "all",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    svg: SvgOpt = None,
    html: HtmlOpt = None,
    color: ColorOpt = "auto",
    allow_pickle: PickleOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a prompt and show tokens, continuation, per-layer and per-head attention statistics,
    checks and a heatmap."""
    _check_outputs(("--json", json_path), ("--svg", svg), ("--html", html))
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if scale not in ("linear", "log"):
        raise fail(f"--scale must be linear or log, got {scale!r}")
    if heads not in (None, "all"):
        raise fail(f"--heads takes 'all', got {heads!r}")
    check_names = _parse_checks(checks)
    with user_errors():
        from attnscope.inspector.report import pick_head
        from attnscope.output import write_atomic
        from attnscope.render.console import emit, output_console, stage_bars
        from attnscope.render.run_view import run_view
        from attnscope.scope import Scope

        console = output_console(color)
        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, bars)
            result = Scope(loaded, backend=backend).run(prompt, max_new_tokens=max_new_tokens, checks=check_names,
                                                        atol=atol, rtol=rtol, roles=True, progress=bars)
            report = result.report()
        layer, head, why = pick_head(report, layer, head)
        if query is not None and not 0 <= query < len(result.ids):
            raise fail(f"--query {query} is out of range (the prompt has {len(result.ids)} tokens: "
                       f"0..{len(result.ids) - 1})")
        parts = run_view(result, report, layer, head, why, width=console.width, every_head=heads == "all",
                         log=scale == "log", query=query)
        emit(console, parts, svg, html, title=f"attnscope run · {loaded.name}")
        if json_path is not None:
            write_atomic(json_path, report.to_json())
    raise typer.Exit(EXIT_OK if report.passed else EXIT_FAILED)


def _check_outputs(*flags: tuple[str, Path | None]) -> None:
    from attnscope.output import check_output_path

    with user_errors():
        for flag, path in flags:
            check_output_path(path, flag)


def _parse_checks(text: str) -> tuple[str, ...]:
    from attnscope.errors import UserError
    from attnscope.inspector.checks import parse_checks

    try:
        names = parse_checks(text)
    except UserError as exc:
        raise fail(str(exc)) from None
    if not names and text.strip() != "none":
        raise fail(f"unknown check {text!r} (give names, 'all' or 'none')")
    return names


def _read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    found = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise fail(f"--prompts {prompts_file}: no such file")
        try:
            text = prompts_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"--prompts {prompts_file}: cannot be read as text ({exc})") from None
        found += [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not found:
        raise fail("give at least one --prompt TEXT or --prompts FILE (one prompt per line)")
    return found


@app.command()
def check(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt to check (repeatable).")] = [],  # noqa: B006
    prompts_file: Annotated[Path | None, typer.Option("--prompts", help="A text file with one prompt per line "
                                                      "(\\n in a line is a newline).")] = None,
    model: ModelOpt = "tiny-code",
    backend: Annotated[list[str], typer.Option("--backend", "-b", help="Backend to check (repeatable): eager, "
                                               "sdpa, flex, triton.")] = ["sdpa"],  # noqa: B006
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    checks: ChecksOpt = "all",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report(s) as JSON here.")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one testcase per "
                                                    "prompt × backend × check).")] = None,
    allow_pickle: PickleOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run checks for every prompt and backend; exit 0 if all pass, 1 if any fails, 2 on bad input."""
    _check_outputs(("--json", json_path), ("--junit", junit_path))
    check_names = _parse_checks(checks)
    prompt_list = _read_prompts(prompt, prompts_file)
    runs = []  # (prompt, backend, report)
    with user_errors():
        from attnscope.backends import get_backend
        from attnscope.inspector.report import report_set
        from attnscope.output import write_atomic
        from attnscope.render.console import console, stage_bars
        from attnscope.render.tables import checks_table
        from attnscope.scope import Scope

        for name in backend:
            get_backend(name)  # an unknown or unavailable backend is bad input: fail before any work
        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, bars)
            scopes = [Scope(loaded, backend=name) for name in backend]
            for prompt_text in prompt_list:  # validate every prompt before running anything
                scopes[0].encode(prompt_text)
            total = len(prompt_list) * len(scopes)
            for prompt_text in prompt_list:
                for scope in scopes:
                    if bars is not None:
                        bars.clear(keep=("loading", "runs"))
                        if total > 1:
                            bars(len(runs), total, "runs")
                            bars.describe("runs", f"{scope.backend}: {prompt_text[:40]!r}")
                    result = scope.run(prompt_text, checks=check_names, atol=atol, rtol=rtol, progress=bars)
                    runs.append((prompt_text, scope.backend, result.report()))
    rows = [(f"{b} · {_short(p)}", c) for p, b, r in runs for c in r.checks]
    out = console()
    out.print(checks_table(rows, title=f"attnscope check · {loaded.name} · {dtype} · {len(prompt_list)} "
                           f"prompt(s) × {len(scopes)} backend(s)"))
    passed = all(r.passed for _, _, r in runs)
    n_failed = sum(not c.passed for _, c in rows)
    out.print(f"{len(rows) - n_failed} passed, {n_failed} failed", style="green" if passed else "bold red")
    if json_path is not None:
        write_atomic(json_path, report_set([r for _, _, r in runs]))
    if junit_path is not None:
        from attnscope.junit import junit_xml

        write_atomic(junit_path, junit_xml([(p, b, r.checks) for p, b, r in runs]))
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def _short(text: str, width: int = 24) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
def mask(
    q_len: Annotated[int, typer.Option("--q-len", "-q", help="Query rows (new tokens).")],
    k_len: Annotated[int | None, typer.Option("--k-len", "-k", help="Keys incl. cache (default: q-len); "
                                              "past = k-len - q-len.")] = None,
    window: Annotated[int | None, typer.Option("--window", help="Causal sliding window size.")] = None,
    pad: Annotated[int, typer.Option("--padding", help="Padding positions of the sequence.")] = 0,
    side: Annotated[str, typer.Option("--side", help="Padding side: left or right.")] = "right",
    prefix: Annotated[int | None, typer.Option("--prefix", help="Prefix-LM: bidirectional over the first N "
                                               "positions (instead of causal).")] = None,
    documents: Annotated[str | None, typer.Option("--documents", help="Comma-separated document id of each "
                                                  "of the k-len positions (packed sequences).")] = None,
    chunk: Annotated[int | None, typer.Option("--chunk", help="Attend only within chunks of N positions.")] = None,
    block: Annotated[str | None, typer.Option("--block", help="Show the tile map of an MxN block grid, "
                                              "e.g. 4x4.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the grid.")] = False,
) -> None:
    """Show the mask that a combination of mask parts gives (causal unless --prefix)."""
    k_len = q_len if k_len is None else k_len
    if q_len < 0 or k_len < 0:
        raise fail(f"sizes must be non-negative, got --q-len {q_len} --k-len {k_len}")
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

    try:
        spec = masks.from_parts(k_len, window=window, padding_count=pad, side=side, prefix=prefix,
                                documents=doc_ids, chunk=chunk)
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
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt to run at start (else the app "
                                               "asks for one).")] = None,
    backend: BackendOpt = "sdpa",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="Continuation shown in the "
                                                "Tokens tab.")] = 8,
    allow_pickle: PickleOpt = False,
) -> None:
    """Browse every layer, head and token in a terminal app while the model runs."""
    with user_errors():
        from attnscope.backends import get_backend
        from attnscope.model.loader import resolve_dtype

        get_backend(backend)
        resolve_dtype(dtype)
        from attnscope.tui.app import AttnScopeApp

        AttnScopeApp(model=model, prompt=prompt, backend=backend, dtype=dtype, device=_resolve_device(device),
                     max_new_tokens=max_new_tokens, allow_pickle=allow_pickle).run()


@app.command()
def heads(
    model: ModelOpt = "tiny-code",
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Text for the previous-token, sink, local "
                                               "and broad scores (default: the repeated random sequence).")] = None,
    backend: BackendOpt = "sdpa",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (with roles) here.")] = None,
    allow_pickle: PickleOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every head (induction, previous-token, sink, local, broad) and name its role."""
    _check_outputs(("--json", json_path))
    with user_errors():
        from attnscope.inspector.heads import REPEAT_LENGTH
        from attnscope.output import write_atomic
        from attnscope.render.console import console, stage_bars
        from attnscope.render.tables import roles_table
        from attnscope.scope import Scope

        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, bars)
            scope = Scope(loaded, backend=backend)
            report = scope.run(prompt if prompt is not None else scope.role_probe(), roles=True,
                               progress=bars).report()
        source = "the prompt" if prompt is not None else f"a random sequence of {REPEAT_LENGTH} tokens repeated"
        out = console()
        out.print(f"[bold]{loaded.name}[/bold] · scores on {source}; induction on a repeated random sequence")
        out.print(roles_table(report))
        if json_path is not None:
            write_atomic(json_path, report.to_json())


@app.command()
def models() -> None:
    """List the bundled sample models."""
    from attnscope.render.console import console
    from attnscope.render.tables import models_table

    console().print(models_table())


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2."""
    try:
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
    except KeyboardInterrupt:
        typer.echo("attnscope: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # click's UsageError family (typer may vendor its own click, so match by interface)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"attnscope {ctx.info_name}" if ctx is not None and ctx.parent is not None else "attnscope"
        typer.echo(f"attnscope: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(EXIT_USAGE if exc.exit_code == EXIT_USAGE else exc.exit_code or EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
