"""Import boundaries: `import attnscope` imports no torch (so ``attnscope --help`` is fast), and the
core (model, masks, backends, inspector, scope) works without rich, textual or typer, and without
importing triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def run_python(code: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env)
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
    "attnscope.backends.eager",
    "attnscope.backends.sdpa",
    "attnscope.model",
    "attnscope.model.config",
    "attnscope.model.llama",
    "attnscope.model.loader",
    "attnscope.model.tokenizer",
    "attnscope.inspector",
    "attnscope.inspector.capture",
    "attnscope.inspector.report",
    "attnscope.scope",
]


def test_core_works_without_ui_libraries(tmp_path):
    """With rich/textual/typer made unimportable, the core still loads a model and runs a Scope."""
    from conftest import build_hf_model

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
