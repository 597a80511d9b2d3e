"""Shared fixtures: tiny random Hugging Face models saved with ``save_pretrained`` (built by
tests/support/models.py), and the committed sample models (tests/support/samples.py).

`zoo[name]` builds a model once per session (lazily) and gives its directory and the HF model
itself (float32, eager attention) as the reference. `samples` / `tiny_code` give the sample models
and fail, never skip, when a committed one is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import_triton_for_the_interpreter() -> None:
    """Triton decides at its first import whether its kernels (and its own tl.* library) run in the
    interpreter. Import it here, with TRITON_INTERPRET=1 when there is no GPU, before any test
    module can import it otherwise; then restore the environment, so the triton backend still
    reports itself unavailable where a test expects that (tests/test_kernels.py sets the variable
    around its own tests)."""
    import sys

    if torch.cuda.is_available() or "triton" in sys.modules:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_for_the_interpreter()

from support.models import PARITY_MODELS, ModelZoo, TinyModel  # noqa: E402  (after triton's import above)


@pytest.fixture(scope="module")
def single_thread():
    """Run torch on one thread: the tiny models' ops are far too small to gain from threads, and on a
    busy 2-core machine OpenMP threads contending for cores make them ~30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> ModelZoo:
    return ModelZoo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session", params=PARITY_MODELS)
def tiny(request, zoo) -> TinyModel:
    """Each tiny model in turn."""
    return zoo[request.param]


@pytest.fixture
def model_copy(zoo, tmp_path):
    """A function name -> a fresh copy of that model's directory, free to be damaged by the test."""
    import shutil

    def copy(name: str = "llama-gqa") -> Path:
        dst = tmp_path / name
        shutil.copytree(zoo[name].path, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    """The sample models by name (`attnscope.samples.sample_models()`); fails, never skips, when a
    committed one is missing (see tests/support/samples.py)."""
    from support.samples import committed_samples

    return committed_samples()


@pytest.fixture(scope="session")
def tiny_code(samples) -> Path:
    """The directory of the committed tiny-code sample model."""
    return samples["tiny-code"]
