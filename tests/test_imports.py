"""Import boundaries: `import attnscope` imports no torch (so ``attnscope --help`` is fast), and the
core (model, masks, backends, inspector, scope) works without rich, textual or typer, and without
importing triton."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Layers, lowest first: a module imports only from its own layer or below (at module level and in
# functions alike); the package faces (`attnscope/__init__.py`, `attnscope.kernels`' lazy entry)
# are the exceptions. The front ends (render, tui, cli) sit on top of the headless core.
LAYERS = [
    (
        "attnscope.errors",
        "attnscope.pooling",
        "attnscope.masks",
        "attnscope.samples",
        "attnscope.sample_models",
        "attnscope.prompts",
    ),
    ("attnscope.backends", "attnscope.kernels"),
    ("attnscope.engine", "attnscope.model", "attnscope.hf", "attnscope.llamacpp", "attnscope.distributed"),
    ("attnscope.inspector", "attnscope.htmlview"),  # the HTML report: strings, no rich (a Result's _repr_html_)
    ("attnscope.scope", "attnscope.session", "attnscope.testing", "attnscope.junit", "attnscope.output"),
    ("attnscope.render",),
    ("attnscope.tui", "attnscope.cli", "attnscope.__main__"),
]


def run_python(code: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_attnscope_does_not_import_torch():
    out = run_python("""
        import json, sys
        import attnscope
        print(json.dumps({"version": attnscope.__version__,
                          "loaded": sorted(m for m in ("torch", "numpy", "transformers", "rich", "textual",
                                                       "typer", "triton") if m in sys.modules)}))
    """)
    assert out["version"]
    assert out["loaded"] == []


CORE_MODULES = [
    "attnscope.errors",
    "attnscope.masks",
    "attnscope.backends",
    "attnscope.backends.base",
    "attnscope.backends.eager",
    "attnscope.backends.sdpa",
    "attnscope.backends.flex",
    "attnscope.model",
    "attnscope.model.config",
    "attnscope.model.llama",
    "attnscope.model.checkpoint",
    "attnscope.model.native",
    "attnscope.model.loader",
    "attnscope.model.tokenizer",
    "attnscope.model.gguf",
    "attnscope.model.gguf_tokenizer",
    "attnscope.inspector",
    "attnscope.inspector.capture",
    "attnscope.inspector.report",
    "attnscope.inspector.run",
    "attnscope.inspector.result",
    "attnscope.inspector.compare",
    "attnscope.htmlview",
    "attnscope.engine",
    "attnscope.scope",
]


def test_core_works_without_ui_libraries(tmp_path):
    """With rich/textual/typer made unimportable, the core still loads a model and runs a Scope."""
    from support.models import build_hf_model

    path = tmp_path / "tiny"
    build_hf_model("qwen2-sliding").save_pretrained(path)
    out = run_python(f"""
        import importlib, json, sys
        for name in ("rich", "textual", "typer", "triton"):
            sys.modules[name] = None  # any import of them raises ImportError
        for name in {CORE_MODULES!r}:
            importlib.import_module(name)
        import attnscope
        model = attnscope.load_model({str(path)!r})
        scope = attnscope.Scope(model, backend="sdpa")
        result = scope.run([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], max_new_tokens=2)
        report = result.report()
        try:
            attnscope.Scope(model, backend="triton")
        except attnscope.errors.UserError:
            pass
        print(json.dumps({{"rows": result.attention(1, 3).shape[0], "layers": len(report.layers),
                           "loaded": [m for m in ("rich", "textual", "typer", "triton")
                                      if sys.modules.get(m) is not None]}}))
    """)
    assert out == {"rows": 10, "layers": 2, "loaded": []}


def test_a_run_imports_only_what_it_uses():
    """`attnscope run` on a short prompt: the model is built without initializing the weights it
    loads next (initializing them on the meta device imports torch's compiler stack, ~1 s), and
    nothing of the TUI, transformers or triton is imported."""
    out = run_python("""
        import json, sys
        sys.argv = ["attnscope", "run", "-p", "def f(x):", "-n", "2", "--quiet"]
        from attnscope.cli import main
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch._dynamo", "torch._inductor",
                          "transformers", "textual", "triton", "attnscope.tui", "attnscope.backends.flex")
                          if m in sys.modules)}))
    """)
    assert out == {"code": 0, "loaded": []}


def test_listing_the_sample_models_imports_no_torch():
    """`attnscope models` reads directories and model cards: torch (~2 s to import) is not needed,
    and the report module it renders with is plain data until a report is built."""
    out = run_python("""
        import contextlib, io, json, sys
        sys.argv = ["attnscope", "models"]
        from attnscope.cli import main
        listing = io.StringIO()
        try:
            with contextlib.redirect_stdout(listing):
                main()
        except SystemExit as exit:
            code = exit.code
        print(json.dumps({"code": code, "tiny-code": "tiny-code (default)" in listing.getvalue(),
                          "loaded": sorted(m for m in ("torch", "transformers", "textual") if m in sys.modules)}))
    """)
    assert out == {"code": 0, "tiny-code": True, "loaded": []}


def _module_files() -> dict[str, Path]:
    files = {}
    for root, package in ((ROOT / "attnscope", "attnscope"), (ROOT / "kernels", "attnscope.kernels")):
        for f in root.rglob("*.py"):
            parts = [package, *f.relative_to(root).with_suffix("").parts]
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = f
    # the sample models' package holds data (its scripts are not installed as modules)
    files["attnscope.sample_models"] = ROOT / "sample_models" / "__init__.py"
    return files


def _imports(name: str, file: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported attnscope module, at module level?) of one file; a TYPE_CHECKING import counts as one
    at module level (the modules still depend on each other)."""
    tree = ast.parse(file.read_text())
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, base]).rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for t in targets:
                while t and t not in known:
                    t = t.rpartition(".")[0]
                if t.startswith("attnscope") and t != name:
                    found.append((t, top))
            visit(child, inner)

    visit(tree, True)
    return found


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_import_graph_has_no_cycle_and_no_upward_import():
    files = _module_files()
    known = set(files)
    graph = {name: _imports(name, f, known) for name, f in files.items()}
    faces = {"attnscope", "attnscope.kernels"}  # package faces import lazily what they offer
    upward = [
        (m, t)
        for m, deps in graph.items()
        if m not in faces
        for t, _ in deps
        if t not in faces and _layer(t) > _layer(m)
    ]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
    # cycles among all imports, at module level and inside functions alike (a lazy import still makes
    # the two modules depend on each other), a module's import of its own package included (a backend
    # that took its helpers from `attnscope.backends`, which imports the backends, was such a cycle)
    edges = {m: {t for t, _ in deps} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def walk(m, path):
        state[m] = 1
        for t in edges.get(m, ()):
            if state.get(t) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, m, t])}")
            if t not in state:
                walk(t, [*path, m])
        state[m] = 2

    for m in edges:
        if m not in state:
            walk(m, [])


def test_running_from_the_parent_of_a_clone_named_attnscope_says_so_in_one_line(tmp_path):
    """From the parent of a clone named ``attnscope`` Python imports the clone as an empty namespace
    package; ``python -m attnscope`` there says so in one line (the checkout's ``__main__.py``)."""
    (tmp_path / "attnscope").symlink_to(ROOT, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", "import attnscope; print(getattr(attnscope, '__file__', None))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    if probe.stdout.strip() != "None":  # installed without an editable finder: the package wins
        pytest.skip("the installed package is imported from there, not the checkout")
    run = subprocess.run([sys.executable, "-m", "attnscope"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "namespace package" in lines[0] and "another directory" in lines[0], run.stderr
