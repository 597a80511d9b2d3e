"""attnscope: a debugger and microscope for attention in causal language models.

The public API is imported lazily, so ``attnscope --help`` never imports torch:

    model = attnscope.load_model("tiny-code", dtype="float32", device="cpu")
    result = attnscope.Scope(model, backend="sdpa").run("def fibonacci(n):")
    result.attention(layer=1, head=3)  # float32 [q, k] probabilities

    wrapped = attnscope.from_transformers(hf_model, tokenizer)  # any transformers causal LM
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Result", "Scope", "compare", "from_transformers", "load_model", "__version__"]


def __getattr__(name: str):
    if name == "load_model":
        from attnscope.model.loader import load_model

        return load_model
    if name == "from_transformers":
        from attnscope.hf import from_transformers

        return from_transformers
    if name in ("Scope", "Result", "compare"):
        from attnscope import scope

        return getattr(scope, name)
    raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
