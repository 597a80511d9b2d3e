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


def _flag_takes_no_value() -> None:
    """`--help` lists a flag without a type: typer's rich help writes "<bool>" after --allow-pickle,
    --json and --help as if they took a value."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)  # typer versions without it write no "<bool>"
    if shown is not None:
        TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flag_takes_no_value()

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Sample model name (see `attnscope models`), a "
                                       "Hugging Face model directory, a GGUF file, or a Hub id (org/name) in the "
                                       "local cache.")]
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
EngineOpt = Annotated[str, typer.Option("--engine", help="native (attnscope's Llama-family model), hf (the "
                                        "transformers model, any causal LM) or auto (native for llama, mistral, "
                                        "qwen2 and qwen3, else hf).")]
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


def _load(model: str, dtype: str, device: str, allow_pickle: bool, engine: str = "auto", bars=None):
    """Load a model, its progress on `bars` (`attnscope.render.console.StageBars`) when given."""
    from attnscope.model.loader import load_model

    if bars is not None:
        bars.describe("loading", f"loading {model}")
    progress = None if bars is None else (lambda done, total, what: bars(done, total, "loading"))
    return load_model(model, dtype=dtype, device=_resolve_device(device), engine=engine, allow_pickle=allow_pickle,
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
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Run a prompt: its tokens, continuation, attention statistics per layer and head, checks, a heatmap."""
    _check_outputs(("--json", json_path), ("--svg", svg), ("--html", html))
    if max_new_tokens < 0:
        raise fail(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if scale not in ("linear", "log"):
        raise fail(f"--scale must be linear or log, got {scale!r}")
    if heads not in (None, "all"):
        raise fail(f"--heads takes 'all', got {heads!r}")
    check_names = _parse_checks(checks)
    _check_tolerances(atol, rtol)
    with user_errors():
        from attnscope.inspector.report import pick_head
        from attnscope.output import write_outputs
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.render.run_view import run_view
        from attnscope.scope import Scope

        console = output_console(color)
        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, engine, bars)
            scope = Scope(loaded, backend=backend)
            _check_place(scope, prompt, layer, head, query)
            result = scope.run(prompt, max_new_tokens=max_new_tokens, checks=check_names, atol=atol, rtol=rtol,
                               roles=True, progress=bars)
            report = result.report()
        layer, head, why = pick_head(report, layer, head)
        parts = run_view(result, report, layer, head, why, width=console.width, every_head=heads == "all",
                         log=scale == "log", query=query)
        write_outputs([("--json", json_path, report.to_json() if json_path else ""),
                       *exports(console, parts, svg, html, title=f"attnscope run · {loaded.name}")])
    emit(console, parts)
    raise typer.Exit(EXIT_OK if report.passed else EXIT_FAILED)


# ---- options checked before any work (outputs, tolerances, prompts) and against the model's layout


def _check_outputs(*flags: tuple[str, Path | None]) -> None:
    from attnscope.output import check_output_paths

    with user_errors():
        check_output_paths(*flags)


def _check_tolerances(atol: float | None, rtol: float | None) -> None:
    from attnscope.inspector.checks import check_tolerance

    with user_errors():
        check_tolerance("--atol", atol)
        check_tolerance("--rtol", rtol)


def _check_place(scope, prompt: str, layer: int | None, head: int | None, query: int | None) -> None:
    """The prompt, --layer, --head and --query against the model's tokenizer and layout, before the run."""
    from attnscope.inspector.report import check_head_range

    layout = scope.model.layout
    check_head_range(layer, head, layout.n_layers, layout.n_heads)
    n = len(scope.encode(prompt))
    if query is not None and not 0 <= query < n:
        raise fail(f"--query {query} is out of range (the prompt has {n} tokens: 0..{n - 1})")


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


PromptListOpt = Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")]
PromptsFileOpt = Annotated[Path | None, typer.Option("--prompts", help="A text file with one prompt per line "
                                                     "(\\n in a line is a newline).")]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one testcase per prompt × "
                                               "backend × check).")]


def _read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """The --prompt texts, then the prompts file's (`-`: stdin), by `attnscope.prompts.prompt_lines`."""
    found = list(prompts)
    if prompts_file is not None:
        stdin = str(prompts_file) == "-"
        if not stdin and not prompts_file.exists():
            raise fail(f"--prompts {prompts_file}: no such file")
        if not stdin and prompts_file.is_dir():
            raise fail(f"--prompts {prompts_file}: is a directory")
        try:
            data = sys.stdin.buffer.read() if stdin else prompts_file.read_bytes()
            text = data.decode("utf-8")
        except OSError as exc:
            raise fail(f"--prompts {prompts_file}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise fail(f"--prompts {prompts_file}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                       f"{exc.start})") from None
        from attnscope.prompts import prompt_lines

        found += prompt_lines(text)
    if not found:
        raise fail("give at least one --prompt TEXT or --prompts FILE (one prompt per line)")
    return found


@app.command()
def check(
    prompt: PromptListOpt = [],  # noqa: B006
    prompts_file: PromptsFileOpt = None,
    model: ModelOpt = "tiny-code",
    backend: Annotated[list[str], typer.Option("--backend", "-b", help="Backend to check (repeatable): eager, "
                                               "sdpa, flex, triton.")] = ["sdpa"],  # noqa: B006
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
    _check_outputs(("--json", json_path), ("--junit", junit_path))
    check_names = _parse_checks(checks)
    _check_tolerances(atol, rtol)
    prompt_list = _read_prompts(prompt, prompts_file)
    runs = []  # (prompt index, prompt, backend, report)
    with user_errors():
        from attnscope.backends import get_backend
        from attnscope.inspector.report import report_set
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.console import console, stage_bars
        from attnscope.scope import Scope

        for name in backend:
            get_backend(name)  # an unknown or unavailable backend is bad input: fail before any work
        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, engine, bars)
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
        write_outputs([("--json", json_path, report_set([r for *_, r in runs]) if json_path else ""),
                       ("--junit", junit_path, junit)])
    out = console()
    title = (f"attnscope check · {loaded.name} · {dtype} · {_count(len(prompt_list), 'prompt')} × "
             f"{_count(len(scopes), 'backend')}")
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
    summary = Text(f"{n_checks - n_failed - n_skipped} passed, {n_failed} failed"
                   + (f", {n_skipped} skipped" if n_skipped else ""), style="bold red" if n_failed else "green")
    return [ChecksView([(n, b, p, checks) for n, p, b, checks in runs], title=title), summary], not n_failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@app.command()
def compare(
    model: Annotated[list[str], typer.Option("--model", "-m", help="The two models, A (the reference) then B: "
                                             "sample model names, Hugging Face model directories or GGUF files.")]
    = [],  # noqa: B006
    prompt: PromptListOpt = [],  # noqa: B006
    prompts_file: PromptsFileOpt = None,
    backend: BackendOpt = "sdpa",
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON here "
                                                   "(schema attnscope.compare/1).")] = None,
    junit_path: JunitOpt = None,
    svg: SvgOpt = None,
    color: ColorOpt = "auto",
    allow_pickle: PickleOpt = False,
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Where model B's attention parts ways with model A's, per layer and head, on the same tokens; \
exit 0 if nothing crosses the tolerance, 1 if something does, 2 on bad input."""
    _check_outputs(("--json", json_path), ("--junit", junit_path), ("--svg", svg))
    _check_tolerances(atol, rtol)
    if len(model) != 2:
        raise fail(f"give two models, --model A --model B (A is the reference), got {len(model)}")
    prompt_list = _read_prompts(prompt, prompts_file)
    with user_errors():
        from rich.text import Text

        from attnscope.backends import get_backend
        from attnscope.inspector.compare import check_layouts, compare_document
        from attnscope.junit import junit_xml
        from attnscope.output import write_outputs
        from attnscope.render.compare_view import compare_view
        from attnscope.render.console import emit, exports, output_console, stage_bars
        from attnscope.scope import compare as compare_models

        get_backend(backend)  # an unknown or unavailable backend fails before any work
        out = output_console(color)
        a, b = (_load(name, dtype, device, allow_pickle, engine) for name in model)
        check_layouts(a.layout, b.layout, (a.name, b.name) if a.name != b.name else ("A", "B"))
        comparisons, parts = [], []
        with stage_bars(quiet) as bars:
            for n, text in enumerate(prompt_list):
                if bars is not None:
                    bars(n, len(prompt_list), "compare")
                    bars.describe("compare", f"comparing {text[:40]!r}")
                comparisons.append(compare_models(a, b, text, backend=backend, atol=atol, rtol=rtol))
        for c in comparisons:
            parts += [*compare_view(c, width=out.width), Text()]
        title = (f"attnscope compare · {b.name} vs {a.name} · {backend} · {dtype} · "
                 f"{_count(len(prompt_list), 'prompt')}")
        checked = [(n, p, backend, c.checks()) for n, (p, c) in enumerate(zip(prompt_list, comparisons, strict=True))]
        findings, passed = _findings(checked, title)
        parts += findings
        write_outputs([("--json", json_path, compare_document(comparisons) if json_path else ""),
                       ("--junit", junit_path, junit_xml(checked, "attnscope.compare") if junit_path else ""),
                       *exports(out, parts, svg, None, title=f"attnscope compare · {b.name} vs {a.name}")])
    emit(out, parts)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


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

    try:  # a mask larger than a summary reads is refused here, before anything is drawn
        spec = masks.from_parts(k_len, window=window, padding_count=pad, side=side, prefix=prefix,
                                documents=doc_ids, chunk=chunk)
        masks.check_scan(spec, q_len, k_len, block_size)
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
    engine: EngineOpt = "auto",
    compare_with: Annotated[str | None, typer.Option("--compare", help="A second model B: the Diff tab shows where "
                                                     "its attention parts ways with this one's.")] = None,
) -> None:
    """Browse every layer, head and token in a terminal app while the model runs."""
    if not all(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr)):  # Textual draws on stderr
        raise fail("attnscope tui needs a terminal: stdin, stdout and stderr must be a tty (for a report "
                   "without one, use attnscope run or attnscope check)")
    with user_errors():
        from attnscope.backends import get_backend
        from attnscope.model.loader import check_engine, resolve_dtype

        get_backend(backend)
        resolve_dtype(dtype)
        check_engine(engine)
        from attnscope.tui.app import AttnScopeApp

        tui_app = AttnScopeApp(model=model, prompt=prompt, backend=backend, dtype=dtype,
                               device=_resolve_device(device), max_new_tokens=max_new_tokens,
                               allow_pickle=allow_pickle, engine=engine, compare=compare_with)
        tui_app.run()
    raise typer.Exit(tui_app.return_code or EXIT_OK)


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
    engine: EngineOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Score every head (induction, previous-token, sink, local, broad) and name its role."""
    _check_outputs(("--json", json_path))
    with user_errors():
        from attnscope.inspector.heads import REPEAT_LENGTH
        from attnscope.output import write_outputs
        from attnscope.render.console import console, stage_bars
        from attnscope.render.tables import roles_table
        from attnscope.scope import Scope

        with stage_bars(quiet) as bars:
            loaded = _load(model, dtype, device, allow_pickle, engine, bars)
            scope = Scope(loaded, backend=backend)
            report = scope.run(prompt if prompt is not None else scope.role_probe(), roles=True,
                               progress=bars).report()
        write_outputs([("--json", json_path, report.to_json() if json_path else "")])
    source = "the prompt" if prompt is not None else f"a random sequence of {REPEAT_LENGTH} tokens repeated"
    out = console()
    out.print(f"[bold]{loaded.name}[/bold] · scores on {source}; induction on a repeated random sequence")
    out.print(roles_table(report))


@app.command()
def models() -> None:
    """List the bundled sample models (the trained ones and the broken variants)."""
    from attnscope.render.console import console
    from attnscope.render.tables import models_table

    console().print(models_table())


EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 130, 141  # 128 + SIGINT, 128 + SIGPIPE (what a shell reports)


class PipeClosed(BaseException):
    """stdout or stderr is a pipe whose reader has gone (`attnscope run ... | head -3`)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream


class PipeGuard:
    """A standard stream whose write or flush, once its reader has gone, raises `PipeClosed` (not an
    Exception, so no handler on the way mistakes it for an error) instead of BrokenPipeError."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise PipeClosed(self.stream) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise PipeClosed(self.stream) from None

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2; Ctrl-C is
    `attnscope: interrupted` and 130; a closed pipe ends the command quietly with 141."""
    sys.stdout, sys.stderr = PipeGuard(sys.stdout), PipeGuard(sys.stderr)
    try:
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
    except PipeClosed as closed:
        # what is still buffered for the closed pipe goes nowhere, so the interpreter's last flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), closed.stream.fileno())
        sys.exit(EXIT_PIPE_CLOSED)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        # click's UsageError family (typer may vendor its own click, so match by interface)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"attnscope {ctx.info_name}" if ctx is not None and ctx.parent is not None else "attnscope"
        typer.echo(f"attnscope: error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(EXIT_USAGE if exc.exit_code == EXIT_USAGE else exc.exit_code or EXIT_FAILED)
    if code == EXIT_INTERRUPTED:
        typer.echo("attnscope: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
