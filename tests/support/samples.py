"""The sample models committed under sample_models/ and shipped as `attnscope.sample_models`.

They are part of the package: a test that needs one fails (it does not skip) when it is missing, so a
packaging regression shows as a failure. Tests take the `samples` / `tiny_code` fixtures of
tests/conftest.py, or call `sample(name)` where a fixture does not fit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnscope.samples import sample_models, sample_models_dir

COMMITTED_SAMPLES = (
    "tiny-code",
    "tiny-induction",
    "tiny-code-q4",
    "deep-random",
    "broken/nan-k-proj",
    "broken/fp16-overflow",
)


def committed_samples() -> dict[str, Path]:
    """Every sample model by name (as `attnscope.samples.sample_models()`); fails the calling test when
    a committed one is missing."""
    found = sample_models()
    missing = [name for name in COMMITTED_SAMPLES if name not in found]
    if missing:
        pytest.fail(
            f"committed sample model(s) missing from {sample_models_dir()}: {', '.join(missing)} "
            f"(found: {', '.join(found) or 'none'}); they are tracked under sample_models/ and must ship "
            "as attnscope.sample_models: a packaging regression",
            pytrace=False,
        )
    return found


def sample(name: str) -> Path:
    """The directory of the committed sample model `name`; fails the calling test when it is missing."""
    assert name in COMMITTED_SAMPLES, f"{name!r} is not a committed sample model"
    return committed_samples()[name]
