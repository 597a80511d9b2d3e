"""The docs cannot drift: every command they show is parsed by the command line, the ones that name
only sample models are run, and every Python block is compiled and (where it needs nothing from
outside) executed.

Commands are read from fenced blocks (``attnscope ...``, ``$ attnscope ...``, ``- run: attnscope ...``
with ``\\`` continuations) and from inline code spans of README.md, CONTRIBUTING.md and docs/*.md.
A synopsis (``[--model M]``, ``a|b``, ``...``) is checked flag by flag: each must be an option of its
command. A concrete command must parse: its command exists, its options exist and their values
convert. Shown output (the lines after a ``$ attnscope`` line) is compared with what the command
prints, line by line for the lines without digits (figures may differ in their last digit between
machines).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attnscope.cli import app
from attnscope.samples import sample_models

SAMPLES = set(sample_models())

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(attnscope [^`]+)`")
SYNOPSIS = re.compile(r"[\[\]|()]|\.\.\.|…|<|>")
COMMAND = typer.main.get_command(app)
# Python blocks that need what only a reader has (a Hub model, their own attention function are
# given below): compiled, not run
NEEDS_OUTSIDE = ("allenai/OLMo",)


@dataclass(frozen=True)
class Shown:
    """A command shown in a doc, and the output shown under it (for ``$`` lines)."""

    where: str  # file:line
    text: str
    output: tuple[str, ...] = ()
    fenced: bool = True  # in a code block; else an inline code span of prose

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _commands() -> list[Shown]:
    found = []
    for doc in DOCS:
        source = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT)
        for block in FENCE.finditer(source):
            if block.group(1) == "python":
                continue
            first = source.count("\n", 0, block.start(2)) + 1
            lines = block.group(2).splitlines()
            i = 0
            while i < len(lines):
                line = re.sub(r"^\s*(\$ |- run: )", "", lines[i])
                dollar = lines[i].lstrip().startswith("$ ")
                start = i
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                i += 1
                if not re.match(r"(attnscope|python -m attnscope) ", line):
                    continue
                output = []
                while dollar and i < len(lines) and not lines[i].lstrip().startswith("$ "):
                    output.append(lines[i])
                    i += 1
                found.append(Shown(f"{name}:{first + start}", line, tuple(output)))
        for span in INLINE.finditer(source):
            line = source.count("\n", 0, span.start()) + 1
            found.append(Shown(f"{name}:{line}", span.group(1), fenced=False))
    return found


COMMANDS = _commands()


def _args(shown: Shown) -> list[str]:
    text = re.sub(r"\s+#.*$", "", shown.text)  # a trailing comment
    args = shlex.split(text)
    return args[3:] if args[:3] == ["python", "-m", "attnscope"] else args[1:]


def _subcommand(args: list[str]):
    """The click command `args` start with: a subcommand, or the group itself for its own options
    (``attnscope --help``) and a placeholder (``attnscope <command> --help``)."""
    if not args or args[0].startswith(("-", "<")):
        return COMMAND
    command = COMMAND.commands.get(args[0])  # type: ignore[attr-defined]
    assert command is not None, f"no command {args[0]!r}"
    return command


def _options(command) -> set[str]:
    return {"--help", *(opt for param in command.params for opt in (*param.opts, *param.secondary_opts))}


def _is_synopsis(shown: Shown) -> bool:
    """A usage line (``[--model M]``, ``a|b``, ``(--prompt TEXT ... | --prompts FILE)``, ``<command>``),
    judged on the words outside quotes."""
    try:
        words = shlex.split(re.sub(r"\s+#.*$", "", shown.text), posix=False)
    except ValueError:
        return True
    return any(SYNOPSIS.search(w) for w in words if not w.startswith(("'", '"')))


def test_the_docs_show_commands():
    assert len(COMMANDS) > 40
    assert {_args(c)[0] for c in COMMANDS if _args(c)} >= {"run", "check", "compare", "mask", "heads", "tui", "models"}


@pytest.mark.parametrize("shown", COMMANDS, ids=str)
def test_every_command_shown_parses(shown):
    text = re.sub(r"\s+#.*$", "", shown.text)
    if _is_synopsis(shown):  # each flag named must be an option of the command
        words = text.split()
        command = _subcommand(words[1:] if words[0] == "attnscope" else words[3:])
        if command is COMMAND and words[1:2] == ["<command>"]:  # any command's flag
            command.params = [p for c in COMMAND.commands.values() for p in c.params]  # type: ignore[attr-defined]
        flags = {m.group(0) for m in re.finditer(r"(?<![\w-])--?[a-z][\w-]*", text)}
        assert flags <= _options(command), f"{shown}: no option {sorted(flags - _options(command))}"
        return
    args = _args(shown)
    command = _subcommand(args)
    if command is COMMAND:
        assert set(args) <= _options(command), f"{shown}: not an option of attnscope"
        return
    try:
        command.make_context(args[0], args[1:])
    except Exception as exc:  # click's (typer may vendor its own: matched by interface)
        if type(exc).__name__ == "Exit":  # --help
            return
        if type(exc).__name__ == "MissingParameter" and not shown.output and shown.fenced is False:
            return  # prose names a command ("`attnscope run` prints ..."): its options are elsewhere
        if not hasattr(exc, "format_message"):
            raise
        pytest.fail(f"{shown}: {exc.format_message()}")


def _runnable(shown: Shown) -> bool:
    """A concrete command of a code block that names sample models only (or none), on the CPU, not
    the TUI."""
    if _is_synopsis(shown) or not shown.fenced:
        return False
    args = _args(shown)
    if not args or args[0] in ("tui",) or "--device" in args or "--help" in args:
        return False
    models = [a for i, a in enumerate(args) if i and args[i - 1] in ("-m", "--model")]
    if args[0] == "compare":
        models += [a for a in args[1:3] if not a.startswith("-")]
    files = [a for i, a in enumerate(args) if i and args[i - 1] in ("--prompts",)]
    return not files and all(m in SAMPLES for m in models)


RUNNABLE = sorted({c.text: c for c in COMMANDS if _runnable(c)}.values(), key=str)


@pytest.mark.slow
@pytest.mark.parametrize("shown", RUNNABLE, ids=str)
def test_commands_on_sample_models_run_and_print_what_is_shown(shown, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs they write land here
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, _args(shown))
    assert result.exit_code in (0, 1), f"{shown}: exit {result.exit_code}: {result.output}"
    printed = {" ".join(line.split()) for line in result.output.splitlines()}
    for line in shown.output:
        if line.strip() and not re.search(r"\d", line) and not line.lstrip().startswith("..."):
            assert " ".join(line.split()) in printed, f"{shown}: shown but not printed: {line!r}"


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        source = doc.read_text(encoding="utf-8")
        code = [b.group(2) for b in FENCE.finditer(source) if b.group(1) == "python"]
        if code:
            blocks.append((str(doc.relative_to(ROOT)), "\n".join(code)))
    return blocks


PYTHON = _python_blocks()


@pytest.mark.parametrize(("doc", "code"), PYTHON, ids=[doc for doc, _ in PYTHON])
def test_python_blocks_compile(doc, code):
    compile(code, doc, "exec")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("doc", "code"), [p for p in PYTHON if not any(n in p[1] for n in NEEDS_OUTSIDE)], ids=lambda p: str(p)[:40]
)
def test_python_blocks_run(doc, code):
    """A doc's blocks run in order in one fresh interpreter, as a reader would paste them; the
    reader's own attention function is the eager reference."""
    preamble = "from attnscope.backends.eager import attend as my_attend\n"
    script = preamble + (
        "import attnscope\nmodel = attnscope.load_model('tiny-code')\n" if "model =" not in code else ""
    )
    proc = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, f"{doc}: {proc.stderr[-2000:]}"
