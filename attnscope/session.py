"""A session: a model (and, for comparisons, a second one) named once, loaded when first needed, and
run or compared on prompt after prompt. What the command line and the TUI share of their work: they
parse and draw; loading, running and comparing happen here, headless.

    session = Session("tiny-code", backend="sdpa", compare_with="tiny-code-q4")
    result = session.run("def f(x):", checks="all")       # loads tiny-code on first use
    comparison = session.compare("def f(x):")             # loads tiny-code-q4 on first use

    Session("tiny-code", compare_with="tiny-code", compare_dtype="bfloat16")  # B: its bfloat16 self

    session.interventions = [Intervention("zero", 1, (2,))]  # ablate head 2 of layer 1
    intervened = session.intervene("def f(x):")           # that run, beside the one without it
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnscope.engine import Engine, Progress
from attnscope.errors import UserError

if TYPE_CHECKING:
    from attnscope.inspector.compare import Comparison
    from attnscope.inspector.interventions import Effect, Intervention
    from attnscope.inspector.result import Result


def resolve_device(device: str) -> str:
    """``auto``: cuda when a GPU is present, else cpu; any other name as it is."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class Intervened:
    """A prompt run with the session's interventions, beside the same run without them."""

    result: Result  # with the interventions: records, logits, continuation (no checks)
    comparison: Comparison  # A: the run without them, B: the run with them
    effect: Effect  # what they changed: logits, greedy tokens, next-token KL, each layer's attention output


@dataclass
class Session:
    """What to load (a model by name or path, its dtype, device, engine) and how to run it (backend);
    `compare_with` names model B of comparisons, loaded in `compare_dtype` and `compare_engine` (default:
    the session's). Models are loaded on first use and kept. `interventions` are what `intervene` runs
    (`attnscope.inspector.interventions`); `run` and `compare` run the model as it is."""

    model_name: str
    backend: str = "auto"
    dtype: str = "float32"
    device: str = "cpu"
    engine: str = "auto"
    allow_pickle: bool = False
    compare_with: str | None = None
    compare_dtype: str | None = None
    compare_engine: str | None = None
    interventions: list[Intervention] = field(default_factory=list)
    _models: dict[tuple[str, str, str], Engine] = field(default_factory=dict, repr=False)

    def load(
        self,
        name: str | None = None,
        progress: Progress | None = None,
        dtype: str | None = None,
        engine: str | None = None,
    ) -> Engine:
        """The model `name` (default: the session's), loaded on first use with the session's settings
        (or the `dtype` and `engine` given)."""
        from attnscope.model.loader import load_model

        key = (self.model_name if name is None else name, dtype or self.dtype, engine or self.engine)
        if key not in self._models:
            self._models[key] = load_model(
                key[0],
                dtype=key[1],
                device=resolve_device(self.device),
                engine=key[2],
                allow_pickle=self.allow_pickle,
                progress=progress,
            )
        return self._models[key]

    def load_compared(self, progress: Progress | None = None) -> Engine:
        """Model B (`compare_with`) in its own dtype and engine."""
        if self.compare_with is None:
            raise ValueError("the session compares with no model")
        return self.load(self.compare_with, progress, self.compare_dtype, self.compare_engine)

    def prepare(self, progress: Progress | None = None) -> Engine:
        """The session's model, loaded, and model B when the session compares: loaded too and checked
        to have the same layout, so that a B that cannot be compared fails before the first run (a
        `UserError`), not in the first comparison. Prompt by prompt, only the tokenization is left to
        differ (`run_and_compare`)."""
        model = self.load(progress=progress)
        if self.compare_with is not None:
            from attnscope.inspector.compare import require_same_layout

            try:
                other = self.load_compared()
            except UserError as exc:  # which of the two models it is
                raise UserError(f"model B (--compare {self.compare_with}): {exc}") from None
            require_same_layout(model.layout, other.layout, (self.model_name, self.compare_with))
        return model

    def describe(self, backend: str | None = None) -> str:
        """The session in one line: "tiny-code · auto · float32 · cpu · vs tiny-code-q4" (B's dtype and
        engine when they are its own: "vs tiny-code (bfloat16)"; the `backend` a run resolved ``auto``
        to when given: "sdpa (auto)")."""
        own = [x for x in (self.compare_dtype, self.compare_engine) if x is not None]
        vs = f" · vs {self.compare_with}" + (f" ({', '.join(own)})" if own else "") if self.compare_with else ""
        shown = f"{backend} (auto)" if backend is not None and self.backend == "auto" else self.backend
        changed = f" · {' '.join(map(str, self.interventions))}" if self.interventions else ""
        return f"{self.model_name} · {shown} · {self.dtype} · {self.device}{vs}{changed}"

    @property
    def loaded(self) -> Engine | None:
        """The session's model when it has been loaded, else None."""
        return self._models.get((self.model_name, self.dtype, self.engine))

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

    def intervene(
        self, prompt: Any, max_new_tokens: int = 0, on_layer: Callable[[int], None] | None = None
    ) -> Intervened:
        """`prompt` run with the session's `interventions` and without them (forward and continuation,
        no checks), compared (`compare_runs`: A without, B with) and their `Effect` measured; an
        intervention outside the model or the prompt is an `ArgumentError`. `on_layer` as in `run`."""
        from attnscope.inspector.compare import compare_runs, tolerance_for
        from attnscope.inspector.interventions import effect_between
        from attnscope.scope import Scope

        if not self.interventions:
            raise ValueError("the session has no interventions")
        scope = Scope(self.load(), backend=self.backend)
        without, with_ = (
            scope.run(prompt, max_new_tokens, interventions=i, residuals=True, on_layer=on_layer)
            for i in ((), self.interventions)
        )
        dtype = scope.model.dtype
        comparison = compare_runs(without.run, with_.run, prompt, tolerance_for(dtype, dtype))
        found = effect_between(self.interventions, *((r.logits, [x.out for x in r.records]) for r in (without, with_)))
        found.continuation = (without.continuation_ids_by_row[0], with_.continuation_ids_by_row[0])
        found.continuation_texts = (str(without.continuation), str(with_.continuation))
        return Intervened(with_, comparison, found)

    def compare(
        self, prompt: str | Sequence[int], atol: float | None = None, rtol: float | None = None
    ) -> Comparison | None:
        """Where `compare_with` parts ways with the session's model on `prompt` (`attnscope.compare`),
        or None when the session compares with nothing."""
        from attnscope.scope import compare

        if self.compare_with is None:
            return None
        return compare(self.load(), self.load_compared(), prompt, backend=self.backend, atol=atol, rtol=rtol)
