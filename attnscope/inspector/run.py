"""A run is a value: the inputs of one forward pass, the attention function that ran, and its records.

`Inputs` is what went into the model: token ids of one padded batch, which of them are real tokens,
the padding mask and the rotary positions of padded rows. `Run` is what the checks receive: the
engine, the backend's name and its attend function (resolved once, by `attnscope.Scope`), the
inputs, every layer's `LayerRecord` and the logits. A check that needs another forward pass (token
by token, or with changed tokens) asks the run's engine for it with the run's own attend function:
no code swaps a backend on a model.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnscope import masks
from attnscope.backends import AttendFn
from attnscope.engine import Engine, Progress, in_pieces
from attnscope.inspector.capture import Capture, LayerOutput, LayerRecord, OutputCapture

# a run's `Progress` reports its stages by name ("forward": layers, "statistics": layers, each check
# by its name: its loop, "roles": layers); for live views, None when unwatched
Step = Callable[[int, int], None]  # (done, total) of one stage


def step_of(progress: Progress | None, name: str) -> Step | None:
    """The (done, total) callback of stage `name` of `progress` (None when there is none)."""
    return None if progress is None else (lambda done, total: progress(done, total, name))


@dataclass(frozen=True)
class Inputs:
    ids: torch.Tensor  # [B, T] token ids; padding is id 0
    real: torch.Tensor  # [B, T] bool: True for the rows' real tokens, False for padding
    padding: masks.MaskSpec | None  # combined with every layer's mask; None when nothing is padded
    positions: torch.Tensor | None  # [B, T] rotary positions of padded rows (each counts from 0); None: 0..T-1

    @classmethod
    def pad(cls, encoded: Sequence[Sequence[int]], side: str, device) -> Inputs:
        """One batch of token-id sequences of any lengths, padded on `side` ("left" or "right")."""
        total = max(len(r) for r in encoded)
        ids = torch.zeros(len(encoded), total, dtype=torch.long, device=device)  # (B, T)
        real = torch.zeros(len(encoded), total, dtype=torch.bool, device=device)  # (B, T)
        for b, row in enumerate(encoded):
            cols = slice(total - len(row), total) if side == "left" else slice(0, len(row))
            ids[b, cols] = torch.tensor(list(row), device=device)
            real[b, cols] = True
        if bool(real.all()):
            return cls(ids, real, None, None)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return cls(ids, real, masks.padding([len(r) for r in encoded], side, total), positions)

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T)."""
        B, T = self.ids.shape
        return B, T

    def last(self) -> torch.Tensor:
        """[B] index of each row's last real token."""
        T = self.ids.shape[1]
        return T - 1 - self.real.flip(-1).long().argmax(-1)


@dataclass(frozen=True)
class Isolated:
    """Per layer, its attention on one input (the parallel forward's own input to that layer) three
    ways: `parallel` (all positions at once), `incremental` (in pieces through the KV cache, chunks or
    single positions, the rows joined), and `reference`, the same computation in float32 (None for a float32
    model, whose parallel path is its own reference)."""

    parallel: list[LayerOutput]
    incremental: list[LayerOutput]
    reference: list[LayerOutput] | None


@dataclass
class Run:
    """One forward pass of `inputs` through `model` with `attend`, and what it recorded."""

    model: Engine
    backend: str  # the name `attend` was resolved from
    attend: AttendFn
    inputs: Inputs
    records: list[LayerRecord]
    logits: torch.Tensor  # [B, T, vocab] float32
    backend_choice: str = "given"  # how the backend was chosen: "given", or "auto: ..." (`Scope`)
    # the KV cache the forward wrote positions 0 .. T-1 into, when it ran into one (decoding may have
    # appended to it since): `prefix_cache` copies its first positions instead of computing them again
    cache: Any = None

    @classmethod
    def forward(
        cls,
        model: Engine,
        backend: str,
        attend: AttendFn,
        inputs: Inputs,
        *,
        cache=None,
        on_layer=None,
        residuals: bool = False,
        backend_choice: str = "given",
    ) -> Run:
        """Run `inputs` in one parallel forward (into `cache` when given: an empty one, which the run
        keeps as its `cache`), capturing every layer (and its block's output, with `residuals`)."""
        capture = Capture(on_layer=on_layer, keep_residuals=residuals, n_layers=model.layout.n_layers)
        logits = model.forward(
            inputs.ids, attend, cache=cache, recorder=capture, mask=inputs.padding, positions=inputs.positions
        )  # (B, T, vocab)
        return cls(model, backend, attend, inputs, capture.layers(), logits.float(), backend_choice, cache)

    def rerun(self, ids: torch.Tensor, start: int = 0, prefix=None, end: int | None = None) -> list[LayerRecord]:
        """The records of the same forward on other token ids ``[B, T]`` (same padding and positions),
        without lse, of positions `start` .. `end` - 1 (default: to the last): with a `prefix` cache
        (`prefix_cache`) of the positions before `start`, through a copy of it; positions after `end`
        are not in the forward at all (the records' rows are those positions)."""
        # only the outputs are compared: no lse, no residual counts
        capture = Capture(count_nonfinite=False, n_layers=self.model.layout.n_layers, lse=False)
        B, T = ids.shape
        end = T if end is None else end
        positions = self.inputs.positions
        self.model.forward(
            ids[:, start:end],
            self.attend,
            cache=self.model.new_cache(B, end) if prefix is None else copy.deepcopy(prefix),
            recorder=capture,
            mask=self.inputs.padding,
            positions=None if positions is None else positions[:, start:end],
        )
        return capture.layers()

    def prefix_cache(self, start: int):
        """A KV cache holding the run's positions 0 .. start-1, for `rerun` of the positions after them:
        those of the cache the run's forward wrote (`cache`), copied, where the engine can copy a
        cache's first positions (``cache_prefix``), else computed by a forward of those positions."""
        B, T = self.inputs.shape
        copy_prefix = getattr(self.model, "cache_prefix", None)
        if self.cache is not None and copy_prefix is not None:
            return copy_prefix(self.cache, start, T)
        cache = self.model.new_cache(B, T)
        positions = self.inputs.positions
        self.model.forward(
            self.inputs.ids[:, :start],
            self.attend,
            cache=cache,
            mask=self.inputs.padding,
            positions=None if positions is None else positions[:, :start],
        )
        return cache

    def incremental(
        self, step: Step | None = None, pieces: Sequence[int] | None = None
    ) -> tuple[list[LayerRecord], torch.Tensor]:
        """The same tokens through the model's KV cache in `pieces` (chunks or single tokens, default: one
        token a piece; `attnscope.engine.in_pieces`): the records joined over the pieces (without lse),
        and the logits ``[B, T, vocab]`` float32; `step(done, total)` as it goes, counting tokens ×
        layers."""
        B, T = self.inputs.shape
        capture = Capture(append=True, count_nonfinite=False, lse=False)  # only the attention outputs are compared
        logits = in_pieces(
            self.model,
            self.inputs.ids,
            self.attend,
            pieces=[1] * T if pieces is None else pieces,
            cache=self.model.new_cache(B, T),
            recorder=capture,
            mask=self.inputs.padding,
            positions=self.inputs.positions,
            step=step,
        )
        return capture.layers(), logits.float()

    def isolated(
        self, step: Step | None = None, reference: bool = True, pieces: Sequence[int] | None = None
    ) -> Isolated | None:
        """Every layer's attention on the same input, the parallel forward's own input to that layer,
        computed in parallel, in `pieces` through a KV cache (default: a token at a time), and
        (float16/bfloat16 models, with `reference`) in float32 (`Engine.forward_isolated`; see
        `Isolated`); `step(done, total)` as it goes, counting tokens × layers. None when the engine
        cannot run it (or cannot run it in pieces of several tokens)."""
        forward = getattr(self.model, "forward_isolated", None)
        if forward is None:
            return None
        B, T = self.inputs.shape
        chunked = pieces is not None and any(size != 1 for size in pieces)
        if chunked and "pieces" not in inspect.signature(forward).parameters:
            return None  # an engine that isolates a token at a time only
        parallel, incremental = OutputCapture(), OutputCapture()  # outputs and lse: all that is compared
        float32 = OutputCapture() if reference and self.model.dtype != torch.float32 else None
        ran = forward(
            self.inputs.ids,
            self.attend,
            cache=self.model.new_cache(B, T),
            parallel=parallel,
            incremental=incremental,
            reference=float32,
            mask=self.inputs.padding,
            positions=self.inputs.positions,
            step=step,
            **({"pieces": pieces} if chunked else {}),
        )
        if ran is False:  # the engine cannot isolate this model's layers
            return None
        return Isolated(parallel.layers(), incremental.layers(), None if float32 is None else float32.layers())

    def float32_forward(self) -> tuple[list[LayerOutput], torch.Tensor] | str:
        """The same inputs through the model computed in float32 (its weights upcast for the call, the
        eager float32 attention; `Engine.forward_float32`): every layer's attention output and the
        logits ``[B, T, vocab]``; or why it could not run, in a line for the report."""
        forward = getattr(self.model, "forward_float32", None)
        if forward is None:
            return f"the {self.model.engine} engine has no float32 forward"
        capture = OutputCapture(lse=False)
        try:
            logits = forward(
                self.inputs.ids, recorder=capture, mask=self.inputs.padding, positions=self.inputs.positions
            )
        except (MemoryError, torch.OutOfMemoryError) as exc:
            return f"no float32 forward: {exc}"
        except RuntimeError as exc:  # a failed allocation on the CPU
            if "alloc" not in str(exc) and "memory" not in str(exc):
                raise
            return f"no float32 forward: {str(exc).splitlines()[0]}"
        return capture.layers(), logits.float()

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's text (token ids as strings when the model has no tokenizer)."""
        tok = self.model.tokenizer
        return tok.token_texts(list(ids)) if tok else [str(i) for i in ids]

    @property
    def exact(self) -> bool:
        """Whether reruns must agree bit for bit: the eager reference in float32 is deterministic on an
        engine whose other computations are too (`Engine.batch_invariant`)."""
        return self.backend == "eager" and self.model.dtype == torch.float32 and self.model.batch_invariant
