"""What the commands share: their options, the one-line failure, loading a model, and the checks of
a command's arguments that only the command line has (output paths, tolerances, places)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 130, 141  # 128 + SIGINT, 128 + SIGPIPE (what a shell reports)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Sample model name (see `attnscope models`), a "
        "Hugging Face model directory, a GGUF file, or a Hub id (org/name) in the "
        "local cache.",
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        help="Attention backend: auto (the fastest that implements what the model uses), eager, sdpa, flex or triton.",
    ),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when present).")]
ChecksOpt = Annotated[
    str,
    typer.Option(
        "--checks",
        help="Comma-separated checks to run: nan, masked_rows, "
        "full_vs_incremental, backend_vs_reference, causality; 'all' or 'none'.",
    ),
]
AtolOpt = Annotated[
    float | None,
    typer.Option(
        "--atol",
        help="Absolute tolerance of the comparing checks "
        "(default by dtype: float32 1e-5, float16 5e-3, bfloat16 1e-2).",
    ),
]
IncrementalOpt = Annotated[
    str,
    typer.Option(
        "--incremental",
        help="How full_vs_incremental takes the prompt through the KV cache: default (prefill chunks of 7, "
        "64 and up to 6 more, then the last 32 tokens one at a time), tokens (every token one at a time), "
        "or chunks:C[,C...] (chunks of those sizes in turn, e.g. chunks:16,64).",
    ),
]
RtolOpt = Annotated[
    float | None,
    typer.Option("--rtol", help="Relative tolerance (default by dtype: float32 1e-4, float16 5e-3, bfloat16 1e-2)."),
]
PickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Accept pickled pytorch_model.bin weights (loaded with torch.load(weights_only=True))."
    ),
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="native (attnscope's Llama-family model), hf (the "
        "transformers model, any causal LM) or auto (native for llama, mistral, "
        "qwen2 and qwen3, else hf); llama.cpp runs a GGUF file in llama.cpp itself (attnscope[llamacpp]).",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", help="No progress on stderr (there is none when stderr is not a terminal).")
]


def fail(message: str) -> typer.Exit:
    """Print one line on stderr and return the exit for bad input (raise it)."""
    typer.echo(f"attnscope: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors():
    """Turn the core's UserError (bad paths, files, flags, prompts) into one line and exit code 2."""
    from attnscope.errors import ArgumentError, UserError

    try:
        yield
    except ArgumentError as exc:  # the core's name of an argument, as the command line's flag
        raise fail(exc.message_for(FLAGS)) from None
    except UserError as exc:
        raise fail(str(exc)) from None


# the core's names of arguments that the command line takes under a flag
FLAGS = {
    "window": "--window",
    "side": "--side",
    "padding_count": "--padding",
    "chunk": "--chunk",
    "prefix": "--prefix",
    "documents": "--documents",
    "layer": "--layer",
    "head": "--head",
    "intervention": "--intervene",
}


def load(model: str, dtype: str, device: str, allow_pickle: bool, engine: str = "auto", bars=None):
    """Load a model (`attnscope.session.Session.load`), its progress on `bars`
    (`attnscope.render.console.StageBars`) when given."""
    from attnscope.session import Session

    if bars is not None:
        bars.describe("loading", f"loading {model}")
    progress = None if bars is None else (lambda done, total, what: bars(done, total, "loading"))
    return Session(model, dtype=dtype, device=device, engine=engine, allow_pickle=allow_pickle).load(progress=progress)


ColorOpt = Annotated[
    str, typer.Option("--color", help="auto (when stdout is a terminal and NO_COLOR is unset), always or never.")
]
SvgOpt = Annotated[Path | None, typer.Option("--svg", help="Also save what is printed as SVG here.")]
WidthOpt = Annotated[
    int | None,
    typer.Option(
        "--width",
        help="Columns of what is printed and of --svg (default: the terminal's; when stdout is not a terminal, "
        "COLUMNS, else 120 for --svg).",
        show_default=False,
    ),
]
HtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--html",
        help="Write the interactive report here: one self-contained HTML file (checks, every head's map, "
        "diff maps) to open in a browser.",
    ),
]
HtmlTerminalOpt = Annotated[
    Path | None, typer.Option("--html-terminal", help="Also save what is printed as HTML here (the terminal's look).")
]


def validate_outputs(*flags: tuple[str, Path | None]) -> None:
    from attnscope.output import validate_output_paths

    with user_errors():
        validate_output_paths(*flags)


def validate_tolerances(atol: float | None, rtol: float | None) -> None:
    from attnscope.inspector.checks import validate_tolerance

    with user_errors():
        validate_tolerance("--atol", atol)
        validate_tolerance("--rtol", rtol)


def validate_place(scope, prompt: str, layer: int | None, head: int | None, query: int | None) -> None:
    """The prompt, --layer, --head and --query against the model's tokenizer and layout, before the run."""
    from attnscope.inspector.report import validate_head_range

    layout = scope.model.layout
    validate_head_range(layer, head, layout.n_layers, layout.n_heads)
    n = len(scope.encode(prompt))
    if query is not None and not 0 <= query < n:
        raise fail(f"--query {query} is out of range (the prompt has {n} tokens: 0..{n - 1})")


def parse_incremental(text: str):
    """The `attnscope.inspector.incremental.Mode` of --incremental (bad input: one line, exit 2)."""
    from attnscope.errors import UserError
    from attnscope.inspector.incremental import parse_mode

    try:
        return parse_mode(text)
    except UserError as exc:
        raise fail(f"--incremental: {exc}") from None


def parse_check_names(text: str) -> tuple[str, ...]:
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
PromptsFileOpt = Annotated[
    Path | None, typer.Option("--prompts", help="A text file with one prompt per line (\\n in a line is a newline).")
]
JunitOpt = Annotated[
    Path | None, typer.Option("--junit", help="Write JUnit XML here (one testcase per prompt × backend × check).")
]


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """The --prompt texts, then the prompts file's (`-`: stdin), by `attnscope.prompts.prompt_lines`."""
    found = list(prompts)
    if prompts_file is not None:
        stdin = str(prompts_file) == "-"
        if not stdin and not prompts_file.exists():
            raise fail(f"--prompts {prompts_file}: no such file")
        if not stdin and prompts_file.is_dir():
            raise fail(f"--prompts {prompts_file}: is a directory")
        from attnscope.errors import UserError
        from attnscope.prompts import read_prompt_bytes

        try:  # in bounded chunks (attnscope.prompts): /dev/zero or `yes |` end with one line
            if stdin:
                data = read_prompt_bytes(sys.stdin.buffer, "--prompts -")
            else:
                with prompts_file.open("rb") as f:
                    data = read_prompt_bytes(f, f"--prompts {prompts_file}")
            text = data.decode("utf-8")
        except UserError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"--prompts {prompts_file}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise fail(
                f"--prompts {prompts_file}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            ) from None
        from attnscope.prompts import prompt_lines

        found += prompt_lines(text)
    if not found:
        raise fail("give at least one --prompt TEXT or --prompts FILE (one prompt per line)")
    return found


def findings(runs, title: str) -> tuple[list, bool]:
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


Top1Opt = Annotated[
    float,
    typer.Option("--top1", help="With --bisect: the fraction of positions whose greedy token must agree (1.0)."),
]
InterveneOpt = Annotated[
    list[str],
    typer.Option(
        "--intervene",
        help="KIND@LAYER[:HEADS] (repeatable; heads as query heads, or kvN for the query heads that read kv head N): "
        "also run each prompt with these heads' attention output replaced (zero, mean, reference; hide[LO:HI] "
        "masks keys LO..HI-1) and show what changed.",
    ),
]


def validate_top1(top1: float) -> None:
    if not 0 < top1 <= 1:
        raise fail(f"--top1 must be in (0, 1], got {top1}")


def parse_interventions(texts: list[str], patch: bool = True) -> list:
    """The `attnscope.inspector.interventions.Intervention` of each --intervene (bad input: one line, exit 2);
    layers and heads are checked against the model when they run. Without `patch`, the command has no
    other run to patch from."""
    from attnscope.errors import ArgumentError
    from attnscope.inspector.interventions import Intervention

    try:
        found = [Intervention.parse(text) for text in texts]
    except ArgumentError as exc:
        raise fail(exc.message_for(FLAGS)) from None
    for iv in found:
        if iv.kind == "patch" and not patch:
            raise fail(f"--intervene {iv}: patch takes another model's attention (compare A B --intervene {iv})")
    return found


def counted(n: int, noun: str) -> str:
    """ "1 prompt", "3 prompts"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
