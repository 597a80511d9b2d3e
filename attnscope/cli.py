"""The `attnscope` command line: thin typer commands that parse, call the core and render.

Importing this module imports neither torch nor the core: each command imports what it needs, so
``attnscope --help`` stays fast. Bad input ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
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
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="Attention backend: eager, sdpa or triton.")]
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


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load(model: str, dtype: str, device: str, allow_pickle: bool):
    """Load a model, with a spinner on stderr when it is a terminal."""
    from attnscope.model.loader import load_model

    err = _console(stderr=True)
    if not err.is_terminal:
        return load_model(model, dtype=dtype, device=_resolve_device(device), allow_pickle=allow_pickle)
    with err.status(f"loading {model} …") as status:
        def progress(done: int, total: int, what: str) -> None:
            status.update(f"loading {model}: {what} ({done}/{total} files)")

        return load_model(model, dtype=dtype, device=_resolve_device(device), allow_pickle=allow_pickle,
                          progress=progress)


def _check_output_path(path: Path | None, flag: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise fail(f"{flag} {path}: directory {path.parent} does not exist")
    if path is not None and path.is_dir():
        raise fail(f"{flag} {path}: is a directory")


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure leaves nothing half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


ColorOpt = Annotated[str, typer.Option("--color", help="auto (when stdout is a terminal and NO_COLOR is unset), "
                                      "always or never.")]
SvgOpt = Annotated[Path | None, typer.Option("--svg", help="Also save what is printed as SVG here.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also save what is printed as HTML here.")]


def _output_console(color: str):
    """The stdout console for --color auto|always|never (auto: rich's detection, NO_COLOR honoured)."""
    from rich.console import Console

    if color not in ("auto", "always", "never"):
        raise fail(f"--color must be auto, always or never, got {color!r}")
    if color == "always":
        return Console(highlight=False, force_terminal=True, color_system="truecolor")
    if color == "never":
        return Console(highlight=False, no_color=True, color_system=None)
    return Console(highlight=False)


def _emit(console, renderables, svg: Path | None = None, html: Path | None = None, title: str = "attnscope"):
    """Print the renderables; with --svg/--html also render them, in color at the same width, to files."""
    for r in renderables:
        console.print(r)
    if svg is None and html is None:
        return
    import io

    from rich.console import Console

    recorder = Console(record=True, width=console.width, file=io.StringIO(), force_terminal=True,
                       color_system="truecolor", highlight=False)
    for r in renderables:
        recorder.print(r)
    if svg is not None:
        _write_atomic(svg, recorder.export_svg(title=title, clear=False))
    if html is not None:
        _write_atomic(html, recorder.export_html(clear=False))


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
) -> None:
    """Run a prompt and show tokens, continuation, per-layer and per-head attention statistics,
    checks and a heatmap."""
    for path, flag in ((json_path, "--json"), (svg, "--svg"), (html, "--html")):
        _check_output_path(path, flag)
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if scale not in ("linear", "log"):
        raise fail(f"--scale must be linear or log, got {scale!r}")
    if heads not in (None, "all"):
        raise fail(f"--heads takes 'all', got {heads!r}")
    check_names = _parse_checks(checks)
    console = _output_console(color)
    with user_errors():
        from rich.text import Text

        from attnscope.inspector.report import pick_head
        from attnscope.render.heatmap import TopKeys, head_heatmap, small_multiples
        from attnscope.render.tables import number_text, run_report
        from attnscope.scope import Scope

        loaded = _load(model, dtype, device, allow_pickle)
        result = Scope(loaded, backend=backend).run(prompt, max_new_tokens=max_new_tokens, checks=check_names,
                                                    atol=atol, rtol=rtol, roles=True)
        report = result.report()
        layer, head, why = pick_head(report, layer, head)
        if query is not None and not 0 <= query < len(result.ids):
            raise fail(f"--query {query} is out of range (the prompt has {len(result.ids)} tokens: "
                       f"0..{len(result.ids) - 1})")
        rec = result.records[layer]
        parts = [run_report(report), Text()]
        if heads == "all":
            stats = report.layers[layer].heads
            parts.append(small_multiples(result, layer, range(result.n_heads), width=console.width, cell_width=28,
                                         max_lines=8, log=scale == "log",
                                         title=f"layer {layer} · every head · {report.layers[layer].mask}",
                                         label=lambda h: f"h{h}·kv{stats[h].kv_head} H="
                                                         + number_text(stats[h].entropy, ".2f")))
        else:
            title = f"layer {layer} · head {head} (kv {head // rec.group_size}) · {rec.mask!r}{why}"
            parts.append(head_heatmap(result, layer, head, width=console.width, log=scale == "log", title=title))
        if query is not None:
            row = result.attention(layer, head, queries=slice(query, query + 1))[0].cpu().numpy()
            allowed = rec.allowed(head)[query].cpu().numpy()
            parts += [Text(), TopKeys(row, result.tokens, query, result.tokens[query], allowed=allowed)]
        _emit(console, parts, svg, html, title=f"attnscope run · {loaded.name}")
        if json_path is not None:
            _write_atomic(json_path, report.to_json())
    raise typer.Exit(EXIT_OK if report.passed else EXIT_FAILED)


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
                                               "sdpa, triton.")] = ["sdpa"],  # noqa: B006
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    checks: ChecksOpt = "all",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report(s) as JSON here.")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one testcase per "
                                                    "prompt × backend × check).")] = None,
    allow_pickle: PickleOpt = False,
) -> None:
    """Run checks for every prompt and backend; exit 0 if all pass, 1 if any fails, 2 on bad input."""
    _check_output_path(json_path, "--json")
    _check_output_path(junit_path, "--junit")
    check_names = _parse_checks(checks)
    prompt_list = _read_prompts(prompt, prompts_file)
    from attnscope.render.tables import checks_table

    runs = []  # (prompt, backend, report)
    err = _console(stderr=True)
    with user_errors():
        from attnscope.backends import get_backend
        from attnscope.scope import Scope

        for name in backend:
            get_backend(name)  # an unknown or unavailable backend is bad input: fail before any work
        loaded = _load(model, dtype, device, allow_pickle)
        scopes = [Scope(loaded, backend=name) for name in backend]
        for prompt_text in prompt_list:  # validate every prompt before running anything
            scopes[0].encode(prompt_text)
        total = len(prompt_list) * len(scopes)
        with _progress(err, total) as advance:
            for prompt_text in prompt_list:
                for scope in scopes:
                    advance(f"{scope.backend}: {prompt_text[:40]!r}")
                    result = scope.run(prompt_text, checks=check_names, atol=atol, rtol=rtol)
                    runs.append((prompt_text, scope.backend, result.report()))
    rows = [(f"{b} · {_short(p)}", c) for p, b, r in runs for c in r.checks]
    console = _console()
    console.print(checks_table(rows, title=f"attnscope check · {loaded.name} · {dtype} · {len(prompt_list)} "
                               f"prompt(s) × {len(scopes)} backend(s)"))
    passed = all(r.passed for _, _, r in runs)
    n_failed = sum(not c.passed for _, c in rows)
    console.print(f"{len(rows) - n_failed} passed, {n_failed} failed", style="green" if passed else "bold red")
    if json_path is not None:
        import json

        if len(runs) == 1:
            text = runs[0][2].to_json()
        else:
            text = json.dumps({"schema": "attnscope.report-set/1", "passed": passed,
                               "reports": [r.to_dict() for _, _, r in runs]}, indent=2)
        _write_atomic(json_path, text)
    if junit_path is not None:
        from attnscope.junit import junit_xml

        _write_atomic(junit_path, junit_xml([(p, b, r.checks) for p, b, r in runs]))
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


def _short(text: str, width: int = 24) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.contextmanager
def _progress(console, total: int):
    """A progress bar on stderr when it is a terminal; yields advance(description)."""
    if not console.is_terminal or total <= 1:
        yield lambda description: None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("checking", total=total)
        started = [False]

        def advance(description: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=description)

        yield advance


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
    from attnscope.render.maskgrid import mask_view

    _console().print(mask_view(spec, q_len, k_len, block=block_size))


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
) -> None:
    """Score every head (induction, previous-token, sink, local, broad) and name its role."""
    _check_output_path(json_path, "--json")
    with user_errors():
        from attnscope.inspector.heads import REPEAT_LENGTH, repeated_sequence
        from attnscope.render.tables import roles_table
        from attnscope.scope import Scope

        loaded = _load(model, dtype, device, allow_pickle)
        scope = Scope(loaded, backend=backend)
        config = loaded.config
        bos = config.bos_token_id if isinstance(config.bos_token_id, int) else None
        text = prompt if prompt is not None else repeated_sequence(config.vocab_size, REPEAT_LENGTH, bos)
        result = scope.run(text, roles=True)
        report = result.report()
        console = _console()
        source = "the prompt" if prompt is not None else f"a random sequence of {REPEAT_LENGTH} tokens repeated"
        console.print(f"[bold]{loaded.name}[/bold] · scores on {source}; induction on a repeated random sequence")
        console.print(roles_table(report))
        if json_path is not None:
            _write_atomic(json_path, report.to_json())


@app.command()
def models() -> None:
    """List the bundled sample models."""
    from rich.table import Table

    from attnscope.model.loader import DEFAULT_MODEL, sample_models

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("name", "size", "description"):
        table.add_column(col)
    for name, path in sample_models().items():
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        label = f"{name} (default)" if name == DEFAULT_MODEL else name
        table.add_row(label, f"{size / 1e6:.1f} MB", _card_summary(path))
    _console().print(table)


def _card_summary(path: Path) -> str:
    """The first line after the title of a model card README.md."""
    card = path / "README.md"
    if not card.is_file():
        return ""
    lines = [ln.strip() for ln in card.read_text().splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("#") and ln != "---"]
    return body[0] if body else ""


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
