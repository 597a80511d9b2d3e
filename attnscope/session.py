"""A session: a model (and, for comparisons, a second one) named once, loaded when first needed, and
run or compared on prompt after prompt. What the command line and the TUI share of their work: they
parse and draw; loading, running and comparing happen here, headless.

    session = Session("tiny-code", backend="sdpa", compare_with="tiny-code-q4")
    result = session.run("def f(x):", checks="all")       # loads tiny-code on first use
    comparison = session.compare("def f(x):")             # loads tiny-code-q4 on first use
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnscope.engine import Engine, Progress
from attnscope.errors import UserError

if TYPE_CHECKING:
    from attnscope.inspector.compare import Comparison
    from attnscope.inspector.result import Result


def resolve_device(device: str) -> str:
    """``auto``: cuda when a GPU is present, else cpu; any other name as it is."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class Session:
    """What to load (a model by name or path, its dtype, device, engine) and how to run it (backend);
    `compare_with` names model B of comparisons. Models are loaded on first use and kept."""

    model_name: str
    backend: str = "eager"
    dtype: str = "float32"
    device: str = "cpu"
    engine: str = "auto"
    allow_pickle: bool = False
    compare_with: str | None = None
    _models: dict[str, Engine] = field(default_factory=dict, repr=False)

    def load(self, name: str | None = None, progress: Progress | None = None) -> Engine:
        """The model `name` (default: the session's), loaded on first use with the session's settings."""
        from attnscope.model.loader import load_model

        name = self.model_name if name is None else name
        if name not in self._models:
            self._models[name] = load_model(
                name,
                dtype=self.dtype,
                device=resolve_device(self.device),
                engine=self.engine,
                allow_pickle=self.allow_pickle,
                progress=progress,
            )
        return self._models[name]

    def describe(self) -> str:
        """The session in one line: "tiny-code · sdpa · float32 · cpu · vs tiny-code-q4"."""
        vs = f" · vs {self.compare_with}" if self.compare_with else ""
        return f"{self.model_name} · {self.backend} · {self.dtype} · {self.device}{vs}"

    @property
    def loaded(self) -> Engine | None:
        """The session's model when it has been loaded, else None."""
        return self._models.get(self.model_name)

    def run(self, prompt: Any, *, on_layer: Callable[[int], None] | None = None, **run_options) -> Result:
        """`attnscope.Scope.run` of the session's model and backend on `prompt` (loading it first)."""
        from attnscope.scope import Scope

        return Scope(self.load(), backend=self.backend).run(prompt, on_layer=on_layer, **run_options)

    def run_and_compare(self, prompt: Any, **run_options) -> tuple[Result, Comparison | str | None]:
        """`run`, with its report computed, then `compare` when the session compares: a comparison
        the models refuse (other tokenizers, other layouts) is its reason as text, not a failed run."""
        result = self.run(prompt, **run_options)
        result.report()  # computed here, in the caller's thread (the TUI's worker, not its event loop)
        try:
            return result, self.compare(prompt)
        except UserError as exc:
            return result, str(exc)

    def compare(
        self, prompt: str | Sequence[int], atol: float | None = None, rtol: float | None = None
    ) -> Comparison | None:
        """Where `compare_with` parts ways with the session's model on `prompt` (`attnscope.compare`),
        or None when the session compares with nothing."""
        from attnscope.scope import compare

        if self.compare_with is None:
            return None
        return compare(self.load(), self.load(self.compare_with), prompt, backend=self.backend, atol=atol, rtol=rtol)
