"""The command line: `attnscope run` and `attnscope models`, exit codes and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnscope.cli import app

runner = CliRunner()
needs_tiny = pytest.mark.usefixtures("tiny_code")  # the committed sample: missing, the test fails (tests/conftest.py)


def invoke(*args: str):
    return runner.invoke(app, list(args))


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr that contains the fragments, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnscope: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom attnscope.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert 'run' in r.output\nr = CliRunner().invoke(app, ['run', '--help'])\n"
        "assert '--prompt' in r.output\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run"], "Missing option '--prompt'"),
        (["run", "-p", "x", "--bogus"], "No such option: --bogus"),
        (["run", "-p", "x", "-n", "many"], "--max-new-tokens"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "attnscope", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@needs_tiny
def test_models_lists_the_default_sample():
    result = invoke("models")
    assert result.exit_code == 0
    assert "tiny-code (default)" in result.output
    assert " MB" in result.output


@needs_tiny
def test_run_shows_every_section_and_writes_the_report(tmp_path):
    out = tmp_path / "report.json"
    result = invoke("run", "--prompt", "def fibonacci(n):", "-n", "8", "--json", str(out))
    assert result.exit_code == 0, result.output
    text = result.output
    for part in (
        "tiny-code",
        "llama",
        "backend sdpa",
        "prompt (",
        "continuation (8 tokens",
        "layers",
        "causal",
        "attention per head",
        "entropy",
        "sink",
        "role",
        "checks",
        "full_vs_incremental",
        "✓",
        "most focused",
        "linear 0 … ",
    ):
        assert part in text, part
    report = json.loads(out.read_text())
    assert report["schema"] == "attnscope.report/1"
    for key in (
        "schema",
        "model",
        "backend",
        "reference",
        "device",
        "dtype",
        "prompt",
        "tokens",
        "layers",
        "checks",
        "passed",
    ):
        assert key in report
    assert report["backend"] == "sdpa" and report["reference"] == "eager"
    assert report["lse_source"] == "aten._scaled_dot_product_flash_attention_for_cpu"
    assert result.stderr == ""  # stderr is not a terminal: no progress
    assert report["prompt"] == "def fibonacci(n):"
    assert report["tokens"][0] == {"index": 0, "id": 0, "text": "<|endoftext|>"}
    assert len(report["layers"]) == 4 and len(report["layers"][0]["heads"]) == 8
    head = report["layers"][1]["heads"][5]
    assert head["kv_head"] == 5 // 4
    assert 0.0 <= head["entropy"] <= 10 and 0.0 < head["max_weight"] <= 1.0
    assert len(report["continuation"]) == 8
    assert report["passed"] is True and {c["name"] for c in report["checks"]} == {
        "nan",
        "masked_rows",
        "full_vs_incremental",
        "backend_vs_reference",
        "causality",
    }
    assert head["role_scores"] is not None and set(head["role_scores"]) == {
        "induction",
        "previous_token",
        "sink",
        "local",
        "broad",
    }


@needs_tiny
@pytest.mark.parametrize("command", [("run", "-n", "2"), ("check",), ("heads",)])
def test_progress_shows_on_a_terminal_and_not_with_quiet(monkeypatch, command):
    """On a terminal stderr, one bar per stage (transient: their last frame is erased); --quiet
    writes nothing there."""
    import io

    from rich.console import Console

    from attnscope.render import console as consoles

    written = io.StringIO()
    plain = consoles.console

    def terminal_stderr(stderr: bool = False):
        if not stderr:
            return plain()
        return Console(file=written, force_terminal=True, width=120, color_system=None)

    monkeypatch.setattr(consoles, "console", terminal_stderr)
    args = [*command, "-p", "def f(x):"] if command[0] != "heads" else [*command]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    frames = written.getvalue()
    stages = ["loading tiny-code", "forward · layers", "row statistics · layers"]
    if command[0] != "check":
        stages += ["head roles · layers"]
    if command[0] != "heads":
        stages += [
            "full_vs_incremental · tokens × layers",
            "causality · perturbations",
            "backend_vs_reference · layers",
        ]
    for stage in stages:
        assert stage in frames, stage
    written.truncate(0)
    written.seek(0)
    assert invoke(*args, "--quiet").exit_code == 0
    assert written.getvalue() == ""


@needs_tiny
def test_run_output_options(tmp_path):
    svg, html = tmp_path / "run.svg", tmp_path / "run.html"
    result = invoke(
        "run",
        "-p",
        "import os\nimport sys",
        "-n",
        "2",
        "--scale",
        "log",
        "--query",
        "3",
        "--svg",
        str(svg),
        "--html",
        str(html),
    )
    assert result.exit_code == 0, result.output
    assert "log " in result.output and "query 3 ⏎: top 4 keys" in result.output
    assert svg.read_text().startswith("<svg") and "<html" in html.read_text().lower()
    assert "\x1b[" not in result.output  # not a terminal: no color codes
    colored = invoke("run", "-p", "import os", "-n", "0", "--checks", "none", "--color", "always")
    assert "\x1b[38;2;" in colored.output and "▀" in colored.output  # truecolor half blocks
    many = invoke("run", "-p", "import os", "-n", "0", "--checks", "none", "--heads", "all", "--layer", "1")
    assert many.exit_code == 0 and "every head" in many.output and "h7·kv1" in many.output


@needs_tiny
def test_check_command_exit_codes_json_and_junit(tmp_path):
    import xml.etree.ElementTree as ET

    out, junit = tmp_path / "r.json", tmp_path / "j.xml"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\\n    return x\n\nimport os\n")
    result = invoke(
        "check", "--prompts", str(prompts), "-b", "eager", "-b", "sdpa", "--json", str(out), "--junit", str(junit)
    )
    assert result.exit_code == 0, result.output
    assert "18 passed, 0 failed, 2 skipped" in result.output  # backend_vs_reference of eager float32 is skipped
    data = json.loads(out.read_text())
    assert data["schema"] == "attnscope.report-set/1" and len(data["reports"]) == 4
    assert data["reports"][0]["prompt"] == "def f(x):\n    return x"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "20" and suite.get("failures") == "0" and suite.get("skipped") == "2"


def test_check_fails_with_exit_1_on_a_broken_model(tmp_path, tiny_code):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan"
    shutil.copytree(tiny_code, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.2.self_attn.k_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    junit = tmp_path / "j.xml"
    result = invoke("check", "-m", str(broken), "-p", "x = 1", "--checks", "nan,causality", "--junit", str(junit))
    assert result.exit_code == 1
    assert "layer 2, k of kv head 0" in result.output
    assert "<failure" in junit.read_text()


def test_check_bad_input():
    assert_user_error(invoke("check"), "give at least one --prompt")
    assert_user_error(invoke("check", "-p", "x", "--checks", "nan,bogus"), "unknown check 'bogus'")
    assert_user_error(invoke("check", "-p", "x", "--prompts", "/nonexistent.txt"), "no such file")


@needs_tiny
def test_run_heatmap_of_a_chosen_head():
    result = invoke("run", "-p", "import os", "-n", "0", "--layer", "2", "--head", "3", "--backend", "eager")
    assert result.exit_code == 0, result.output
    assert "layer 2 · head 3 (kv 0)" in result.output
    assert "continuation" not in result.output


@needs_tiny
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--layer", "4"], ["--layer 4 is out of range", "0..3"]),
        (["--head", "8"], ["--head 8 is out of range", "0..7"]),
        (["--dtype", "float64"], ["unknown dtype 'float64'"]),
        (["--device", "cuda:7"], ["not available"]),
        (["--device", "tpu"], ["unknown device 'tpu'"]),
        (["--backend", "nope"], ["unknown backend 'nope'"]),
        (["--backend", "triton"], ["backend 'triton' is not available"]),
        (["-n", "-1"], ["--max-new-tokens must be >= 0"]),
        (["-n", "5000"], ["exceeds the model's 4096 positions"]),
    ],
)
def test_run_bad_flags(argv, fragments):
    assert_user_error(invoke("run", "-p", "x = 1", *argv), *fragments)


def test_run_bad_model_paths(tmp_path):
    assert_user_error(invoke("run", "-p", "x", "-m", str(tmp_path / "missing")), "not found")
    (tmp_path / "file").write_text("hi")
    assert_user_error(invoke("run", "-p", "x", "-m", str(tmp_path / "file")), "is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("run", "-p", "x", "-m", str(empty)), "has no config.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert_user_error(invoke("run", "-p", "x", "-m", str(bad)), "malformed JSON")


def test_run_bad_model_files(tmp_path, tiny_code):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_code, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 3}))
    assert_user_error(invoke("run", "-p", "x", "-m", str(broken)), "not divisible by num_key_value_heads")
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert_user_error(
        invoke("run", "-p", "x", "-m", str(broken), "--engine", "native"), "unsupported model_type 'gpt2'"
    )
    # auto: not a native type, so transformers builds a GPT-2, which these Llama weights do not fill
    assert_user_error(invoke("run", "-p", "x", "-m", str(broken)), "the weights lack", "lm_head.weight")
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    assert_user_error(invoke("run", "-p", "x", "-m", str(broken)), "not a valid safetensors file")


@needs_tiny
def test_run_empty_prompt_and_output_directory(tmp_path):
    assert_user_error(invoke("run", "-p", ""), "the prompt is empty")
    assert_user_error(invoke("run", "-p", "x", "--json", str(tmp_path / "no" / "r.json")), "does not exist")
    assert_user_error(invoke("run", "-p", "x", "--json", str(tmp_path)), "is a directory")
    assert not any(Path(tmp_path).iterdir())


@needs_tiny
def test_check_at_80_columns_groups_runs_and_keeps_every_word_whole(tmp_path):
    """A heading per prompt × backend, one line per check under it, findings on their own lines when
    they do not fit: no finding is cut into fragments, no "where" part is broken."""
    import xml.etree.ElementTree as ET

    from rich.cells import cell_len

    from attnscope.inspector.checks import CHECK_NAMES

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\\n    return x\n")
    out, junit = tmp_path / "r.json", tmp_path / "j.xml"
    result = runner.invoke(
        app,
        [
            "check",
            "-m",
            "broken/nan-k-proj",
            "-p",
            "for i in range(10):",
            "--prompts",
            str(prompts),
            "-b",
            "eager",
            "-b",
            "sdpa",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--junit",
            str(junit),
        ],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    assert lines[0] == "attnscope check · nan-k-proj · float32 · 2 prompts × 2 backends"
    headings = [n for n, line in enumerate(lines) if line.startswith("prompt ")]
    assert [lines[n].split(" · ")[:2] for n in headings] == [
        ["prompt 0", "eager"],
        ["prompt 0", "sdpa"],
        ["prompt 1", "eager"],
        ["prompt 1", "sdpa"],
    ]
    assert "'def f(x):⏎    return x'" in lines[headings[2]]
    for start, end in zip(headings, [*headings[1:], len(lines)], strict=True):
        rows = [line for line in lines[start + 1 : end] if line[:4] in ("  ✓ ", "  ✗ ", "  - ")]  # -: skipped
        assert [row.split()[1] for row in rows] == list(CHECK_NAMES)
    words = result.output.split()
    for report in json.loads(out.read_text())["reports"]:
        for check in report["checks"]:
            assert all(word in words for word in check["message"].split()), check["message"]
            for key in ("layer", "head", "position", "stage"):
                if (check["where"] or {}).get(key) is not None:
                    assert any(f"{key} {check['where'][key]}" in line for line in lines), (key, check["where"])
    # JUnit: testcases named by the prompt's index and the backend (it numbered runs: prompt 0..3)
    names = [case.get("name") for case in ET.parse(junit).getroot().iter("testcase")]
    assert len(set(names)) == len(names) == 20
    assert "nan[prompt 0 · eager: for i in range(10):]" in names
    assert "nan[prompt 0 · sdpa: for i in range(10):]" in names
    assert "causality[prompt 1 · sdpa: def f(x):\n    return x]" in names


@needs_tiny
def test_no_color_in_a_terminal_draws_the_shade_ramp():
    """NO_COLOR=1 in a real terminal: rich keeps the terminal and drops the colors, so half blocks
    come out blank; the heatmap must use the shade ramp there as without a terminal."""
    args = ["run", "-p", "import os", "-n", "0", "--checks", "none", "--device", "cpu"]
    terminal = {"FORCE_COLOR": "1", "TERM": "xterm-256color", "COLUMNS": "100"}
    colored = runner.invoke(app, args, env=terminal)
    assert "▀" in colored.output and "\x1b[" in colored.output  # the terminal is seen as one
    plain = runner.invoke(app, args, env={**terminal, "NO_COLOR": "1"})  # the other ways: test_render.py
    assert plain.exit_code == 0, plain.output
    assert "▀" not in plain.output and " ░▒▓█  linear" in plain.output


def test_models_lists_every_bundled_model_grouped_and_the_error_names_them_all(tmp_path):
    from attnscope.samples import sample_models_dir

    root = sample_models_dir()
    bundled = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("config.json"))
    if not bundled:
        pytest.skip("no bundled sample models")
    result = invoke("models")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines() if line.split() and line.split()[0] in bundled]
    assert sorted(names) == bundled  # broken/nan-k-proj and broken/fp16-overflow were missing
    if any(name.startswith("broken/") for name in bundled):
        lines = result.output.splitlines()
        group = next(n for n, line in enumerate(lines) if line.startswith("broken:"))
        assert all(
            name.startswith("broken/")
            for name in names[names.index(next(n for n in names if n.startswith("broken/"))) :]
        )
        assert lines[group + 1].startswith("broken/")
    missing = invoke("run", "-p", "x", "-m", str(tmp_path / "nope"))
    assert_user_error(missing, "not found", *bundled)


def test_help_shows_no_type_after_flags_and_whole_command_descriptions():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert "<bool>" not in result.output
    run_help = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "80"})
    assert "<bool>" not in run_help.output and "<str>" in run_help.output  # options that take a value keep it
    # each command's description wraps only where the next word does not fit (a line broke mid-sentence)
    panel = [line for line in result.output[result.output.index("Commands") :].splitlines() if line.startswith("│")]
    start = panel[0].index("Run a prompt")
    descriptions: dict[str, list[str]] = {}
    for line in panel:
        name, text = line[1:start].strip(), line[start:-1].rstrip()
        if name:
            descriptions[name] = [text]
        else:
            descriptions[list(descriptions)[-1]].append(text)
    room = len(panel[0]) - 1 - start
    for name, texts in descriptions.items():
        for line, following in zip(texts, texts[1:], strict=False):
            assert len(line) + 1 + len(following.split()[0]) > room - 1, (name, texts)
    assert len(descriptions) == 8  # run, check, compare, bisect, mask, tui, heads, models


@needs_tiny
def test_svg_width_is_the_width_option_else_columns_else_a_page(tmp_path, monkeypatch):
    """Piped (CliRunner's stdout is no terminal), --svg takes --width, else COLUMNS, else 120 columns
    (rich alone would give 80); what is printed has that width too."""
    import re

    monkeypatch.delenv("COLUMNS", raising=False)

    def svg_width(*extra: str) -> float:
        svg = tmp_path / "out.svg"
        result = invoke("run", "-p", "x = 1", "-n", "0", "--checks", "none", "--svg", str(svg), *extra)
        assert result.exit_code == 0, result.output
        return float(re.search(r'viewBox="0 0 ([\d.]+) ', svg.read_text()).group(1))

    page = svg_width()
    assert page == svg_width("--width", "120") > svg_width("--width", "90")
    monkeypatch.setenv("COLUMNS", "100")
    assert svg_width() == svg_width("--width", "100") < page
    assert_user_error(invoke("run", "-p", "x", "--width", "20"), "--width must be at least 40")


@needs_tiny
def test_backend_triton_without_triton_names_the_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    result = invoke("run", "-p", "x = 1", "-n", "0", "--backend", "triton")
    assert_user_error(result, "backend 'triton' is not available", "pip install 'attnscope[triton]'")
