"""Bad input to the command line, one row per case: the arguments, the exit code and a fragment of
the message. Every row asserts that exit code, exactly one line on stderr (``attnscope: error: ...``),
no traceback and no file left in the output directory.

Rows marked `SUB` run the real CLI in a subprocess (``python -m attnscope``): usage errors that only
the entry point formats, bytes that only a real argv carries, a process without a terminal, real
devices. The others run in-process with typer's CliRunner; those marked `BEFORE` must be refused
before the model runs (`Scope.run` raises if it is reached). The model-file cases are in
tests/test_bad_models.py, the mask parts' own checks in tests/test_masks.py; the streams (a closed
pipe, Ctrl-C, an ASCII terminal) and what the good side of each rule writes follow the table.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnscope.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("samples")  # the committed samples: missing, every test fails

SUB, BEFORE, NOT_ROOT = "subprocess", "before the run", "not as root"
# subprocess rows (~2 s each) left to the full suite: check-atol-nan and the other mask rows cover them in process
SLOW_ROWS = {"atol-nan", "mask-huge-q-len"}
RUN = ["run", "-p", "x = 1", "-n", "0", "--checks", "none"]  # the cheapest run of the default model
CHECK = ["check", "-p", "x = 1", "--checks", "nan"]
YES = b"y\n" * ((16 << 20) // 2 + 1)  # what `yes |` gives, just past the 16 MiB a prompts file may hold
RECURRING = ",".join(str(i % 2) for i in range(12000))  # document ids whose keys are not one interval

ROWS = [
    # --- tolerances: finite and >= 0 (a NaN one passes every comparison)
    ("atol-nan", [*RUN, "--atol", "nan"], 2, "--atol must be a finite number >= 0, got nan", {SUB}),
    ("atol-inf", [*RUN, "--atol", "inf"], 2, "--atol must be a finite number >= 0, got inf", {BEFORE}),
    ("atol-negative", [*RUN, "--atol", "-1e-5"], 2, "--atol must be a finite number >= 0, got -1e-05", {BEFORE}),
    ("rtol-nan", [*RUN, "--rtol", "nan"], 2, "--rtol must be a finite number >= 0, got nan", {BEFORE}),
    ("check-atol-nan", [*CHECK, "--atol", "NaN"], 2, "--atol must be a finite number >= 0", {BEFORE}),
    ("check-rtol-minus-inf", [*CHECK, "--rtol", "-inf"], 2, "--rtol must be a finite number >= 0", {BEFORE}),
    ("atol-not-a-number", [*RUN, "--atol", "tiny"], 2, "Invalid value for '--atol'", {SUB}),
    # --- prompts: UTF-8 text
    (
        "prompt-bytes",
        ["run", "-p", b"def f(\xff):", "-n", "0"],
        2,
        "the prompt is not valid UTF-8 (byte 0xff at character 6)",
        {SUB},
    ),
    ("prompt-escaped-byte", ["run", "-p", "ab\udcfe"], 2, "not valid UTF-8 (byte 0xfe at character 2)", {BEFORE}),
    ("prompt-lone-surrogate", ["run", "-p", "x\ud800"], 2, "not valid UTF-8 (U+D800 at character 1)", {BEFORE}),
    ("check-second-prompt", ["check", "-p", "fine", "-p", "\udcc3("], 2, "not valid UTF-8 (byte 0xc3", {BEFORE}),
    ("heads-prompt", ["heads", "-p", "\udce9t\udce9"], 2, "not valid UTF-8 (byte 0xe9 at character 0)", set()),
    ("heads-empty-prompt", ["heads", "-p", ""], 2, "the prompt is empty", set()),
    ("run-empty-prompt-before-the-run", [*RUN[:2], "", *RUN[3:]], 2, "the prompt is empty", {BEFORE}),
    # --- --layer / --head / --query against the model's layout, before the run
    ("layer-negative", [*RUN, "--layer", "-1"], 2, "--layer -1 is out of range (the model has 4 layers", {BEFORE}),
    ("layer-far", [*RUN, "--layer", "100", "--head", "0"], 2, "--layer 100 is out of range", {BEFORE}),
    (
        "head-far",
        [*RUN, "--head", "99", "--layer", "0"],
        2,
        "--head 99 is out of range (each layer has 8 heads",
        {BEFORE},
    ),
    ("query-past-the-prompt", [*RUN, "--query", "99"], 2, "--query 99 is out of range (the prompt has", {BEFORE}),
    ("query-negative", [*RUN, "--query", "-1"], 2, "--query -1 is out of range", {BEFORE}),
    ("layer-not-an-int", [*RUN, "--layer", "one"], 2, "Invalid value for '--layer'", {SUB}),
    # --- other run options
    ("scale", [*RUN, "--scale", "cubic"], 2, "--scale must be linear or log", {BEFORE}),
    ("heads-option", [*RUN, "--heads", "some"], 2, "--heads takes 'all'", {BEFORE}),
    ("color", [*RUN, "--color", "sometimes"], 2, "--color must be auto, always or never", {BEFORE}),
    ("run-unknown-check", [*RUN[:-1], "nan,leaks"], 2, "unknown check 'leaks'", {BEFORE}),
    ("check-unknown-backend", [*CHECK, "-b", "eager", "-b", "flash"], 2, "unknown backend 'flash'", {BEFORE}),
    ("run-missing-value", ["run", "-p"], 2, "Option '-p' requires an argument", {SUB}),
    # --- prompts files: UTF-8, split on newlines only, `-` is stdin
    (
        "prompts-not-utf8",
        ["check", "--prompts", "{in}/latin1.txt"],
        2,
        "--prompts {in}/latin1.txt: not UTF-8 text (byte 0xe9 at offset 4)",
        {BEFORE},
    ),
    (
        "prompts-stdin-not-utf8",
        ["check", "--prompts", "-"],
        2,
        "--prompts -: not UTF-8 text (byte 0xff at offset 3)",
        {BEFORE, b"ok\n\xff\n"},
    ),
    ("prompts-stdin-empty", ["check", "--prompts", "-"], 2, "give at least one --prompt", {BEFORE, b""}),
    ("prompts-only-blank-lines", ["check", "--prompts", "{in}/blank.txt"], 2, "give at least one --prompt", {BEFORE}),
    ("prompts-directory", ["check", "--prompts", "{in}"], 2, "is a directory", {BEFORE}),
    (
        "prompts-stdin-bytes",
        ["check", "--checks", "nan", "--prompts", "-"],
        2,
        "not UTF-8 text (byte 0xc3 at offset 1)",
        {SUB, b"a\xc3(\n"},
    ),
    ("prompts-missing-value", ["check", "--prompts"], 2, "Option '--prompts' requires an argument", {SUB}),
    # --- prompts: bounded (attnscope.prompts: 1 MiB a prompt, 16 MiB a prompts file), read in chunks
    ("prompts-dev-zero", ["check", "--prompts", "/dev/zero"], 2, "line 1 is longer than 1 MiB", {BEFORE}),
    ("prompts-dev-urandom", ["check", "--prompts", "/dev/urandom"], 2, "--prompts /dev/urandom: ", {BEFORE}),
    ("prompts-stdin-yes", ["check", "--prompts", "-"], 2, "-: longer than 16 MiB", {BEFORE, YES}),
    (
        "prompts-one-line-of-51-mb",
        ["check", "--prompts", "{in}/one-line.txt"],
        2,
        "line 2 is longer than 1 MiB (the limit of a prompt)",
        {BEFORE},
    ),
    ("prompt-longer-than-1-mib", [*RUN[:2], "é" * (1 << 19) + "x", *RUN[3:]], 2, "longer than 1 MiB", {BEFORE}),
    # --- models that are no file: refused from their stat, never opened (a FIFO would block)
    ("model-fifo", [*RUN, "-m", "{in}/fifo"], 2, "{in}/fifo: not a regular file (a FIFO)", {SUB}),
    ("model-fifo-gguf", [*RUN, "-m", "{in}/fifo.gguf"], 2, "not a regular file (a FIFO)", set()),
    ("model-dev-stdin", [*RUN, "-m", "/dev/stdin"], 2, "/dev/stdin: not a regular file (a FIFO)", {SUB, b""}),
    ("model-link-to-dev-zero", [*RUN, "-m", "{in}/zero"], 2, "not a regular file (a character device)", set()),
    ("model-empty-name", [*RUN, "-m", ""], 2, "the model name is empty", set()),
    # --- outputs: checked before the work; a write that fails leaves nothing
    ("svg-missing-directory", [*RUN, "--svg", "{out}/no/run.svg"], 2, "directory {out}/no does not exist", {BEFORE}),
    ("html-is-a-directory", [*RUN, "--html", "{out}"], 2, "--html {out}: is a directory", {BEFORE}),
    ("junit-is-a-directory", [*CHECK, "--junit", "{out}"], 2, "--junit {out}: is a directory", {BEFORE}),
    (
        "json-and-svg-one-file",
        [*RUN, "--json", "{out}/r", "--svg", "{out}/r"],
        2,
        "--json and --svg both name",
        {BEFORE},
    ),
    (
        "json-and-junit-one-file",
        [*CHECK, "--json", "{out}/r", "--junit", "{out}/./r"],
        2,
        "--json and --junit both name",
        {BEFORE},
    ),
    (
        "json-disk-full",
        [*RUN, "--json", "/dev/full", "--svg", "{out}/run.svg", "--html", "{out}/run.html"],
        2,
        "--json /dev/full: cannot write: No space left on device",
        set(),
    ),
    (
        "junit-disk-full",
        [*CHECK, "--junit", "/dev/full", "--json", "{out}/r.json"],
        2,
        "--junit /dev/full: cannot write: No space left on device",
        set(),
    ),
    ("heads-json-is-a-directory", ["heads", "--json", "{out}"], 2, "--json {out}: is a directory", set()),
    # (as root /proc passes the check before the work and its write fails; else the check refuses it)
    (
        "json-in-proc",
        [*RUN, "--json", "/proc/attnscope.json", "--svg", "{out}/run.svg"],
        2,
        "--json /proc/attnscope.json: ",
        set(),
    ),
    (
        "svg-in-proc",
        [*RUN, "--json", "{out}/r.json", "--svg", "/proc/attnscope.svg"],
        2,
        "--svg /proc/attnscope.svg: ",
        set(),
    ),
    (
        "json-read-only-directory",
        [*RUN, "--json", "{in}/read-only/r.json"],
        2,
        "directory {in}/read-only is not writable",
        {BEFORE, NOT_ROOT},
    ),
    (
        "json-read-only-file",
        [*RUN, "--json", "{in}/read-only.json"],
        2,
        "{in}/read-only.json: the file is not writable",
        {BEFORE, NOT_ROOT},
    ),
    ("json-missing-value", ["run", "-p", "x", "--json"], 2, "Option '--json' requires an argument", {SUB}),
    # --- attnscope mask: sizes above what a summary reads are refused before anything is drawn
    ("mask-q-len-0", ["mask", "--q-len", "0"], 2, "--q-len must be >= 1", set()),
    ("mask-q-len-0-k-len", ["mask", "--q-len", "0", "--k-len", "5", "--json"], 2, "--q-len must be >= 1", set()),
    ("mask-too-many-rows", ["mask", "--q-len", "5000000"], 2, "5000000 query rows is more than a summary reads", set()),
    ("mask-too-many-keys", ["mask", "--q-len", "4", "--k-len", str(10**13)], 2, "10000000000000 keys", set()),
    ("mask-huge-q-len", ["mask", "--q-len", str(10**30)], 2, "is more than a summary reads", {SUB}),
    (
        "mask-too-many-tiles",
        ["mask", "--q-len", "100000", "--block", "1x1"],
        2,
        "100000×100000 tiles, more than a tile map holds",
        set(),
    ),
    (
        "mask-recurring-documents",
        ["mask", "--q-len", "12000", "--documents", RECURRING],
        2,
        "1.44e+08 cells, evaluated one by one",
        set(),
    ),
    (
        "mask-huge-document-id",
        ["mask", "--q-len", "3", "--documents", f"0,1,{10**20}"],
        2,
        "document ids must fit in 64 bits",
        set(),
    ),
    (
        "mask-huge-prefix",
        ["mask", "--q-len", "3", "--prefix", str(10**20)],
        2,
        f"--prefix {10**20} must be within 0..3",
        set(),
    ),
    ("mask-huge-padding", ["mask", "--q-len", "3", "--padding", str(10**20)], 2, "must be within 0..3", set()),
    ("mask-block-zero", ["mask", "--q-len", "8", "--block", "0x4"], 2, "--block must look like 4x4", set()),
    ("mask-block-one-side", ["mask", "--q-len", "8", "--block", "4"], 2, "--block must look like 4x4", set()),
    ("mask-q-len-float", ["mask", "--q-len", "1.5"], 2, "Invalid value for '--q-len'", {SUB}),
    # --- attnscope tui needs a terminal
    ("tui-without-a-terminal", ["tui"], 2, "attnscope tui needs a terminal", set()),
    ("tui-bad-model-without-a-terminal", ["tui", "-m", "{out}/nothing"], 2, "needs a terminal", set()),
    ("tui-stdin-not-a-tty", ["tui", "-p", "x"], 2, "stdin, stdout and stderr must be a tty", {SUB}),
]
assert len(ROWS) >= 60 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Input files the rows name as {in}: a latin-1 prompts file, one of blank lines, read-only paths."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "latin1.txt").write_bytes(b"cafe\xe9 = 1\n")
    (root / "blank.txt").write_text("\n   \n\t\n")
    (root / "read-only").mkdir()
    (root / "read-only").chmod(0o555)
    (root / "read-only.json").write_text("{}")
    (root / "read-only.json").chmod(0o444)
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "fifo.gguf")
    (root / "zero").symlink_to("/dev/zero")
    with (root / "one-line.txt").open("wb") as f:  # a short line, then 51 MB of one line (sparse)
        f.write(b"x = 1\n")
        f.truncate(51_000_000)
    return root


def fill(arg, out: Path, inputs: Path):
    return arg if isinstance(arg, bytes) else arg.replace("{out}", str(out)).replace("{in}", str(inputs))


def params():
    for name, argv, code, fragment, flags in ROWS:
        marks = [pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")] if NOT_ROOT in flags else []
        if name in SLOW_ROWS:
            marks.append(pytest.mark.slow)
        yield pytest.param(argv, code, fragment, flags, id=name, marks=marks)


@pytest.mark.parametrize(("argv", "code", "fragment", "flags"), list(params()))
def test_bad_input(argv, code, fragment, flags, tmp_path, inputs, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    argv = [fill(a, out, inputs) for a in argv]
    fragment = fill(fragment, out, inputs)
    stdin = next((f for f in flags if isinstance(f, bytes)), None)
    if SUB in flags:
        proc = subprocess.run(
            [sys.executable, "-m", "attnscope", *argv],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            cwd=out,
            timeout=300,
        )
        status, stdout = proc.returncode, proc.stdout.decode(errors="replace")
        stderr = proc.stderr.decode(errors="replace")
    else:
        if BEFORE in flags:

            def started(*args, **kwargs):
                raise AssertionError("the run started before the bad input was found")

            monkeypatch.setattr("attnscope.scope.Scope.run", started)
        monkeypatch.chdir(out)
        result = runner.invoke(app, argv, input=stdin)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        status, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert status == code, (status, stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("attnscope: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
    assert stdout == "", stdout  # nothing printed before the error
    assert sorted(p.name for p in out.iterdir()) == [], "files left in the output directory"


# ---- the good side of each rule ------------------------------------------------------------------


def invoke(*argv: str, **kwargs):
    result = runner.invoke(app, list(argv), **kwargs)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_a_prompts_file_splits_on_newlines_only(tmp_path):
    """A form feed, a vertical tab and the Unicode line separators stay inside their prompt; a CRLF
    file gives the same prompts as an LF one; `-` reads the same file from stdin."""
    text = "def f():\fpass\r\n\nx\u2028y\x0bz\u0085w\n"
    (tmp_path / "p.txt").write_bytes(text.encode())
    expected = ["def f():\fpass", "x\u2028y\x0bz\u0085w"]
    for argv, stdin in ((["--prompts", str(tmp_path / "p.txt")], None), (["--prompts", "-"], text.encode())):
        report = tmp_path / "r.json"
        result = invoke("check", "--checks", "nan", *argv, "--json", str(report), input=stdin)
        assert result.exit_code == 0, result.output
        assert [r["prompt"] for r in json.loads(report.read_text())["reports"]] == expected


def test_json_never_holds_a_bare_nan(tmp_path):
    """The broken model's NaN reaches statistics, role scores and figures: they are written as the
    strings "nan" / "inf" / "-inf", and the file parses with a parser that refuses NaN."""

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))

    run_json, heads_json = tmp_path / "run.json", tmp_path / "heads.json"
    result = invoke("run", "-m", "broken/nan-k-proj", "-p", "def f(x):", "-n", "2", "--json", str(run_json))
    assert result.exit_code == 1, result.output
    report = strict(run_json.read_text())
    values = [
        h[key]
        for layer in report["layers"]
        for h in layer["heads"]
        for key in ("entropy", "max_weight", "first_token_mass")
    ]
    assert "nan" in values and all(isinstance(v, float) or v in ("nan", "inf", "-inf") for v in values)
    assert invoke("heads", "-m", "broken/nan-k-proj", "--json", str(heads_json)).exit_code == 0
    scores = [
        v
        for layer in strict(heads_json.read_text())["layers"]
        for h in layer["heads"]
        for v in h["role_scores"].values()
    ]
    assert scores and all(isinstance(v, float) or v == "nan" for v in scores)


def test_json_of_a_report_with_non_finite_figures():
    from attnscope.inspector.report import Check, Report

    report = Report(
        model={},
        backend="eager",
        reference="eager",
        device="cpu",
        dtype="float32",
        prompt="x",
        tokens=[],
        continuation=[],
        masks=[],
        layers=[],
        checks=[
            Check(
                "nan",
                False,
                {
                    "max_abs_diff": float("nan"),
                    "per_layer": [1.0, float("-inf")],
                    "nested": {"tolerance": float("inf")},
                },
            )
        ],
    )
    figures = json.loads(report.to_json())["checks"][0]["figures"]
    assert figures == {"max_abs_diff": "nan", "per_layer": [1.0, "-inf"], "nested": {"tolerance": "inf"}}


def test_tolerances_of_the_python_api():
    import attnscope
    from attnscope.errors import UserError

    scope = attnscope.Scope(attnscope.load_model("tiny-code"))
    with pytest.raises(UserError, match="atol must be a finite number >= 0, got nan"):
        scope.run("x = 1", checks="full_vs_incremental", atol=float("nan"))
    with pytest.raises(UserError, match="rtol must be a finite number >= 0, got -0.1"):
        scope.run("x = 1", checks="full_vs_incremental", rtol=-0.1)


def test_junit_escapes_control_characters(tmp_path):
    """A prompt with a form feed, an escape and a NUL-free bell: the XML parses and names them."""
    junit = tmp_path / "j.xml"
    result = invoke(
        "check", "-p", "a\fb\x1b[0m\x07", "-m", "broken/nan-k-proj", "--checks", "nan", "--junit", str(junit)
    )
    assert result.exit_code == 1, result.output
    suite = ET.parse(junit).getroot().find("testsuite")
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == ["nan[prompt 0 · sdpa: a\\x0cb\\x1b[0m\\x07]"]
    assert suite.find("testcase/failure").get("message")


def test_output_devices_are_written_through_and_never_replaced(tmp_path):
    """/dev/null stays a device; a symlink stays a link and its target gets the report; a FIFO is
    written as a stream; a regular file is replaced whole, with its mode kept."""
    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    result = invoke(*RUN, "--json", "/dev/null", "--svg", str(link), "--html", str(kept))
    assert result.exit_code == 0, result.output
    assert Path("/dev/null").is_char_device()
    assert link.is_symlink() and target.read_text().startswith("<svg")
    assert "<html" in kept.read_text().lower() and kept.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "link.json", "target.json"]


def test_a_fifo_output_is_streamed(tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))  # open waits for the writer
    reader.start()
    result = invoke(*RUN, "--json", str(fifo))
    reader.join()
    assert result.exit_code == 0, result.output
    assert json.loads(received[0])["schema"] == "attnscope.report/1" and fifo.is_fifo()


# ---- streams -----------------------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly_and_outputs_are_complete(tmp_path):
    """`attnscope run ... | head -1`: no traceback, no message; the shell's status for a process
    that a closed pipe ended (141), and the --json written in full before anything was printed.
    (The pipe's reader is closed before the command starts, so its first write fails.)"""
    report = tmp_path / "r.json"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "attnscope", "run", "-p", "def f(x):", "-n", "4", "--json", str(report)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b""
    assert json.loads(report.read_text())["passed"] is True


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """SIGINT while the command waits for its prompts (a FIFO nobody writes to yet)."""
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnscope", "check", "--prompts", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with open(fifo, "w"):  # returns once the command has opened the FIFO: it now waits in read()
        proc.send_signal(signal.SIGINT)
        # a second Ctrl-C, as a user would press, only if the first was not delivered: in a fresh
        # environment a full suite's run lost it twice in 2 runs (the command then waits forever)
        for _ in range(30):
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    assert proc.stderr.read().decode() == "attnscope: interrupted\n" and proc.stdout.read() == b""


def test_a_stream_that_cannot_encode_the_glyphs_gets_ascii():
    """stdout in ASCII (as PYTHONIOENCODING=ascii makes it): the glyphs' look-alikes, a token's é as ?."""
    result = CliRunner(charset="ascii").invoke(app, ["run", "-p", "café = 1", "-n", "0"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    text = result.stdout_bytes.decode("ascii")  # raises if any byte is not ASCII
    assert re.search(r"^\+ +nan ", text, re.M) and re.search(r"^\+ +causality ", text, re.M)  # ✓
    prompt_line = next(line for line in text.splitlines() if line.startswith("0:"))
    assert "?" in prompt_line and "_=" in prompt_line  # é's bytes, and ␣ (a space in a token)
    assert "#" in text and ". masked" in text  # the heatmap's full cells and its legend


# ---- the TUI ----------------------------------------------------------------------------------


async def test_tui_ctrl_c_quits_and_the_exit_code_is_the_last_runs():
    from attnscope.tui.app import AttnScopeApp

    app_ = AttnScopeApp(model="/nonexistent/model", prompt="x")
    async with app_.run_test(size=(100, 30)) as pilot:
        while "shown" not in app_.query_one("#error").classes:
            await pilot.pause(0.05)
        await pilot.press("ctrl+c")
    assert app_.return_code == 2  # the run failed on bad input


async def test_tui_error_inside_a_run_is_one_line_and_exit_1(monkeypatch):
    from attnscope.tui.app import AttnScopeApp

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nwith a second line")

    monkeypatch.setattr("attnscope.scope.Scope.run", broken)
    app_ = AttnScopeApp(model="tiny-code", prompt="x")
    async with app_.run_test(size=(100, 30)) as pilot:
        while "shown" not in app_.query_one("#error").classes:
            await pilot.pause(0.05)
        assert str(app_.query_one("#error").render()) == "error: RuntimeError: kernel exploded with a second line"
        await pilot.press("q")
    assert app_.return_code == 1


async def test_tui_unhandled_exception_is_one_line_not_a_traceback(monkeypatch, capsys):
    from attnscope.tui.app import AttnScopeApp

    def broken(self, event):
        raise ValueError("no run today")

    monkeypatch.setattr(AttnScopeApp, "on_input_submitted", broken)
    app_ = AttnScopeApp(model="tiny-code")
    with pytest.raises(ValueError, match="no run today"):  # Pilot re-raises what closed the app
        async with app_.run_test(size=(100, 30)) as pilot:
            await pilot.press("x", "enter")
            await pilot.pause()
    assert app_.return_code == 1
    assert capsys.readouterr().err == "attnscope: error: ValueError: no run today\n"


def test_a_symlinked_output_writes_its_target_atomically(tmp_path, monkeypatch):
    """--json link.json, the link to a regular file: the target is replaced by rename (a temporary beside
    it), the link stays; a write that fails (a full disk) leaves the target's old content whole."""
    from attnscope import output

    target, link = tmp_path / "real" / "report.json", tmp_path / "link.json"
    target.parent.mkdir()
    target.write_text('{"old": true}')
    link.symlink_to(target)
    inode = target.stat().st_ino
    assert invoke(*RUN, "--json", str(link)).exit_code == 0
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == "attnscope.report/1"
    assert target.stat().st_ino != inode  # renamed over, not written in place
    target.write_text('{"old": true}')

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output.os, "replace", full)
    with pytest.raises(output.UserError, match="No space left on device"):
        output.write_outputs([("--json", link, "{}" * 100_000)])
    assert target.read_text() == '{"old": true}' and sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
