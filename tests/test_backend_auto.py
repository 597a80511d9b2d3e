"""``--backend auto``, the default: per model, the fastest backend that implements what its layers use.

The features a model uses are found by running it (one token), not from its name: Gemma 2's
soft-capping rules out SDPA, gpt-oss's sinks do not (SDPA implements them), a native Llama uses
neither. An explicit backend that lacks a feature is still refused.
"""

from __future__ import annotations

import json

import pytest
from support.models import build_architecture, random_ids
from test_cli import assert_user_error
from test_loader import write_word_tokenizer
from typer.testing import CliRunner

import attnscope
from attnscope.backends import choose_backend, get_backend, validate_backend
from attnscope.cli import app
from attnscope.engine import attention_features
from attnscope.errors import UnsupportedFeature, UserError

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"


def test_the_fastest_backend_that_implements_every_feature():
    assert choose_backend([], "cpu") == ("sdpa", "auto: the fastest on cpu")
    assert choose_backend(["sinks"], "cpu") == ("sdpa", "auto: the fastest on cpu")
    assert choose_backend(["softcap"], "cpu") == (
        "eager",
        "auto: sdpa does not implement attention logit soft-capping",
    )
    # on a GPU FlexAttention (compiled) comes before the eager reference
    assert choose_backend(["softcap", "sinks"], "cuda")[0] == "flex"


def test_auto_is_a_choice_not_a_backend():
    validate_backend("auto")  # valid wherever a backend is named
    with pytest.raises(UserError, match="unknown backend 'sdpb' \\(choose from: auto, eager"):
        validate_backend("sdpb")
    with pytest.raises(UserError, match="resolve it with choose_backend"):
        get_backend("auto")


@pytest.mark.parametrize(("name", "features"), [("llama", []), ("gemma2", ["softcap"]), ("gpt_oss", ["sinks"])])
def test_features_are_found_by_running_the_model(name, features):
    engine = attnscope.from_transformers(build_architecture(name))
    assert attention_features(engine) == features


def test_a_native_model_uses_no_feature(tiny_code):
    model = attnscope.load_model(tiny_code)
    assert attention_features(model) == []
    scope = attnscope.Scope(model)
    assert (scope.backend, scope.backend_choice) == ("sdpa", "auto: the fastest on cpu")


def test_scope_and_compare_default_to_auto():
    gemma = attnscope.from_transformers(build_architecture("gemma2"))
    ids = (random_ids(12, 100, seed=1)[0] % 97 + 3).tolist()
    result = attnscope.Scope(gemma).run(ids, checks="all")
    assert result.backend == "eager" and all(c.passed for c in result.checks), [c.message for c in result.checks]
    report = result.report().to_dict()
    assert report["backend_choice"] == "auto: sdpa does not implement attention logit soft-capping"
    # an explicit backend that lacks a feature is refused as before, naming it
    with pytest.raises(UnsupportedFeature, match="which backend 'sdpa' does not implement \\(backend 'auto'"):
        attnscope.Scope(gemma, backend="sdpa").run(ids, checks="none")
    comparison = attnscope.compare(gemma, gemma, ids)
    assert comparison.run_a.backend == comparison.run_b.backend == "eager"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """gemma2 and gpt-oss directories as transformers saves them, with a word tokenizer."""
    dirs = {}
    for name in ("gemma2", "gpt_oss"):
        path = tmp_path_factory.mktemp("hf") / name
        build_architecture(name).save_pretrained(path)
        write_word_tokenizer(path, 90)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize(
    ("name", "backend", "choice"),
    [
        ("gemma2", "eager", "auto: sdpa does not implement attention logit soft-capping"),
        ("gpt_oss", "sdpa", "auto: the fastest on cpu"),
        ("tiny-code", "sdpa", "auto: the fastest on cpu"),
    ],
)
def test_the_default_command_runs_every_model(model_dirs, tmp_path, name, backend, choice):
    model = str(model_dirs.get(name, name))
    prompt = "def f(x):" if name == "tiny-code" else PROMPT
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", "-m", model, "-p", prompt, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert (report["backend"], report["backend_choice"]) == (backend, choice)
    assert all(c["passed"] for c in report["checks"])
    shown = CliRunner().invoke(app, ["run", "-m", model, "-p", prompt, "--checks", "none", "-n", "0"])
    assert f"backend {backend} (auto)" in shown.output
    assert ("auto chose eager: sdpa does not implement" in shown.output) == (backend == "eager")


def test_an_explicit_backend_without_the_feature_is_still_refused(model_dirs):
    assert_user_error(
        CliRunner().invoke(app, ["run", "-m", str(model_dirs["gemma2"]), "-p", "w1 w2", "-b", "sdpa"]),
        "gemma2 layer 0 uses attention logit soft-capping, which backend 'sdpa' does not implement",
    )
