"""The bundled sample models: where they are, their names, and their cards. No torch: `attnscope
models` lists them without importing it."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "tiny-code"


def sample_models_dir() -> Path:
    import attnscope.sample_models

    return Path(attnscope.sample_models.__file__).parent


def sample_models() -> dict[str, Path]:
    """Bundled sample models by name: the top-level ones ("tiny-code"), then those in folders, named
    by their path ("broken/nan-k-proj"), each group in alphabetical order. A sample is a Hugging Face
    model directory or a directory holding a GGUF file."""
    root = sample_models_dir()
    found = {p.parent.relative_to(root) for p in root.rglob("config.json")}
    found |= {p.parent.relative_to(root) for p in root.rglob("*.gguf") if p.is_file()}
    return {d.as_posix(): root / d for d in sorted(found, key=lambda d: (len(d.parts), d.as_posix()))}


def model_card_summary(path: Path) -> str:
    """The first line after the title of a model's card (its README.md), or ""."""
    card = path / "README.md"
    if not card.is_file():
        return ""
    lines = [ln.strip() for ln in card.read_text().splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("#") and ln != "---"]
    return body[0] if body else ""
