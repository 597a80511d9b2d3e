"""Scope: run a model on a prompt with a chosen backend and keep what its attention did.

    model = attnscope.load_model("tiny-code")
    result = attnscope.Scope(model, backend="sdpa").run("def fibonacci(n):", max_new_tokens=16)
    result.attention(layer=0, head=3)   # float32 [q, k] probabilities, recomputed from q, k, lse
    result.report().to_json()

`Scope` resolves the backend's attend function once. `run` encodes the prompt into `Inputs`, runs
one parallel forward into a KV cache (a `Run`: what the checks receive), decodes the continuation
through the same cache, runs the checks and scores the head roles. A list of prompts runs as one
padded batch (left or right padding): the padding mask and per-row rotary positions make every row
compute what it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch

from attnscope.backends import AUTO, choose_backend, get_backend
from attnscope.engine import Engine, attention_features
from attnscope.errors import UserError
from attnscope.inspector.capture import row_stats
from attnscope.inspector.checks import parse_checks, run_checks
from attnscope.inspector.compare import (
    Comparison,
    compare_runs,
    require_same_layout,
    require_same_tokens,
    tolerance_for,
)
from attnscope.inspector.heads import HeadRole, head_roles, probe_length, repeated_sequence, scores_on
from attnscope.inspector.incremental import parse_mode
from attnscope.inspector.interventions import Intervention, intervene
from attnscope.inspector.report import Check
from attnscope.inspector.result import Result
from attnscope.inspector.run import Inputs, Progress, Run, Step, step_of
from attnscope.prompts import Prompt, validate_prompt_size

__all__ = ["Comparison", "Prompt", "Result", "Scope", "compare"]


def validate_text(prompt: str) -> None:
    """A UserError when a prompt is not text that UTF-8 can hold: bytes that were not UTF-8 (Python
    keeps them in argv as lone surrogates) or a lone surrogate itself."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(prompt[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise UserError(f"the prompt is not valid UTF-8 ({what} at character {exc.start})") from None


class Scope:
    """A model (an `attnscope.engine.Engine`) plus an attention backend, ready to inspect prompts."""

    def __init__(self, model: Engine, backend: str = AUTO):
        """`backend`: a backend's name (`attnscope.backends`), or ``auto``: the fastest that implements
        every feature the model's layers use, on its device (`backend_choice` says which and why).
        An engine that computes attention in its own kernel (``own_attention``: the llama.cpp engine)
        takes ``auto`` or its own name only; attnscope's backends are then its reference."""
        own = getattr(model, "own_attention", None)
        if own is not None:
            if backend not in (AUTO, model.engine):
                raise UserError(
                    f"the {model.engine} engine computes attention with its own kernel: --backend {backend} "
                    "cannot replace it (attnscope's eager reference checks it: backend_vs_reference); use auto"
                )
            backend, self.backend_choice = model.engine, f"{model.engine}'s own attention"
        elif backend == AUTO:
            backend, self.backend_choice = choose_backend(attention_features(model), model.device.type)
        else:
            self.backend_choice = "given"
        # an unknown or unavailable backend fails here, early
        self.attend = own if own is not None else get_backend(backend)
        self.model = model
        self.backend = backend

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (a string, or token ids as they are), validated against the model."""
        vocab = self.model.layout.vocab_size
        if isinstance(prompt, str):
            if not prompt:
                raise UserError("the prompt is empty")
            validate_text(prompt)
            validate_prompt_size(prompt)  # before the tokenizer: a 50 MB prompt aborts inside it
            if self.model.tokenizer is None:
                raise UserError(f"{self.model.path} has no tokenizer.json: pass token ids, not text")
            ids = self.model.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise UserError("the prompt is empty (no tokens)")
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise UserError(f"token id {bad[0]} is out of range for vocab_size {vocab}")
        return ids

    def inputs(
        self, prompt: Prompt | Sequence[Prompt], padding_side: str = "left", max_new_tokens: int = 0
    ) -> tuple[Inputs, bool]:
        """The `Inputs` of a prompt or a batch of prompts, and whether it was a batch."""
        if max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if padding_side not in ("left", "right"):
            raise UserError(f"padding side must be 'left' or 'right', got {padding_side!r}")
        batched = not isinstance(prompt, str) and bool(prompt) and not isinstance(prompt[0], int)
        prompts = cast(Sequence[Prompt], prompt if batched else [prompt])
        encoded = [self.encode(p) for p in prompts]
        total, limit = max(len(r) for r in encoded), self.model.layout.max_positions
        if total + max_new_tokens > limit:
            raise UserError(
                f"prompt ({total} tokens) + {max_new_tokens} new tokens exceeds the model's {limit} positions"
            )
        return Inputs.pad(encoded, padding_side, self.model.device), batched

    @torch.inference_mode()
    def forward(self, prompt: Prompt | Sequence[Prompt], padding_side: str = "left", residuals: bool = False) -> Run:
        """One parallel forward of a prompt (or batch), every layer captured (with each block's output
        when `residuals`); no decoding, no checks."""
        inputs, _ = self.inputs(prompt, padding_side)
        return Run.forward(
            self.model, self.backend, self.attend, inputs, residuals=residuals, backend_choice=self.backend_choice
        )

    @torch.inference_mode()
    def run(
        self,
        prompt: Prompt | Sequence[Prompt],
        max_new_tokens: int = 0,
        padding_side: str = "left",
        checks: str | Sequence[str] | None = (),
        atol: float | None = None,
        rtol: float | None = None,
        on_layer: Callable[[int], None] | None = None,
        on_check: Callable[[Check], None] | None = None,
        on_ready: Callable[[Result], None] | None = None,
        roles: bool = False,
        progress: Progress | None = None,
        incremental: str | None = None,
        interventions: Sequence[Intervention] = (),
        residuals: bool = False,
    ) -> Result:
        """Run the prompt in one parallel forward, capturing every layer's attention, then decode
        `max_new_tokens` greedily with the KV cache, then run the named checks.

        Args:
            prompt: text or a list of token ids; or a list of those, run as one padded batch.
            max_new_tokens: greedy continuation length.
            padding_side: "left" or "right", for a batch of prompts of different lengths.
            checks: check names (`attnscope.inspector.checks.CHECK_NAMES`) as a sequence or a
                comma-separated string; "all" for every one, "none" or None for none.
            atol, rtol: override the dtype's default tolerances of the comparing checks.
            on_layer, on_check: called as each layer's record arrives and as each check finishes (for
                live views); an exception raised there stops the run.
            on_ready: called with the `Result` as soon as its records and continuation exist, before
                the checks and roles fill it in (views draw it while they run).
            roles: also score every head's role (`attnscope.inspector.heads`): on the probe, a short
                repeated random sequence (one more forward pass), not on the prompt, so that a head
                has the same role whatever the prompt.
            progress: called with (done, total, stage) as the work advances: "forward" and
                "statistics" (layers), "decode" (0 of the new tokens, then all), each check by its
                name (its loop: layers, tokens, perturbations), "roles" (layers).
            incremental: how `full_vs_incremental` takes the prompt through the KV cache
                (`attnscope.inspector.incremental`): "default" (None: prefill chunks of sizes that do
                not divide each other, then the last 32 tokens one at a time), "tokens" (every token
                one at a time) or "chunks:16" / "chunks:16,64" (chunks of those sizes in turn).
            interventions: run the forward and the continuation with these heads' attention output
                replaced (`attnscope.inspector.interventions`; ``zero``: ablated). The checks test
                the model as it is: with interventions, ask for none. The roles are the model's own.
            residuals: also keep each block's output in the records (what `compare_runs` reads).

        Returns:
            A `Result` with ``.tokens``, ``.logits``, ``.attention(layer, head)``, ``.report()``.
        """
        names = parse_checks(checks)  # bad names fail before any work
        mode = parse_mode(incremental)
        if interventions and names:
            raise UserError("checks test the model as it is: run them without interventions")
        inputs, batched = self.inputs(prompt, padding_side, max_new_tokens)
        B, T = inputs.shape
        cache = self.model.new_cache(B, T + max_new_tokens)
        layout = self.model.layout
        n_layers = layout.n_layers
        for iv in interventions:
            iv.validate(n_layers, layout.n_heads, T, layout.n_kv_heads)
        attend = intervene(self.attend, interventions, n_layers) if interventions else self.attend

        def layer_done(layer: int) -> None:
            if progress is not None:
                progress(layer + 1, n_layers, "forward")
            if on_layer is not None:
                on_layer(layer)

        run = Run.forward(
            self.model,
            self.backend,
            attend,
            inputs,
            cache=cache,
            on_layer=layer_done,
            residuals=residuals,
            backend_choice=self.backend_choice,
        )
        last_logits = run.logits[torch.arange(B, device=run.logits.device), inputs.last()].unsqueeze(1)  # (B, 1, V)
        decoding = step_of(progress, "decode")
        if decoding is not None and max_new_tokens:
            decoding(0, max_new_tokens)
        new_ids = self.model.decode(
            last_logits, cache, attend, max_new_tokens, mask=inputs.padding, positions=inputs.positions
        )
        if decoding is not None and max_new_tokens:
            decoding(max_new_tokens, max_new_tokens)
        result = Result(run, prompt, batched, new_ids.tolist())
        if on_ready is not None:
            on_ready(result)
        if roles or {"nan", "masked_rows"} & set(names):  # the row statistics they read, as a stage of its own
            row_stats(run.records, step_of(progress, "statistics"))
        result.checks, result.diffs = run_checks(
            run, names, atol, rtol, on_check=on_check, progress=progress, incremental=mode
        )
        run.cache = None  # the checks are done with the KV cache (causality copies from it): a Result does not hold it
        if roles:
            result.roles = self._roles(run, step=step_of(progress, "roles"))
        return result

    def role_probe(self, seed: int = 0) -> list[int]:
        """The probe that head roles are measured on: a random sequence repeated twice (after the
        BOS), as long as `attnscope.inspector.heads.REPEAT_LENGTH` where the model's positions allow."""
        layout = self.model.layout
        length = probe_length(layout.max_positions, layout.bos_token_id)
        return repeated_sequence(layout.vocab_size, length, layout.bos_token_id, seed)

    def head_roles(self, prompt: Prompt | None = None, seed: int = 0) -> list[list[HeadRole]]:
        """Every head's role scores and role, measured on the probe (`role_probe`); with `prompt`,
        also the previous-token, sink, local and broad scores on it (`HeadRole.prompt_scores`: None
        where the prompt has too few rows to score, see `attnscope.inspector.heads`)."""
        return self._roles(None if prompt is None else self.forward(prompt), seed)

    @torch.inference_mode()
    def _roles(self, prompt: Run | None = None, seed: int = 0, step: Step | None = None) -> list[list[HeadRole]]:
        """The roles measured on the probe, with the scores on the `prompt`'s run when given."""
        probe = self.role_probe(seed)
        bos = self.model.layout.bos_token_id is not None
        roles = head_roles(self.forward(probe), (len(probe) - bos) // 2, step)
        if prompt is not None:
            on_prompt = scores_on(prompt)
            for layer, layer_scores in zip(roles, on_prompt, strict=True):
                for role, scores in zip(layer, layer_scores, strict=True):
                    role.prompt_scores = scores
        return roles


def compare(
    model_a: Engine | str,
    model_b: Engine | str,
    prompt: Prompt,
    *,
    backend: str = AUTO,
    atol: float | None = None,
    rtol: float | None = None,
) -> Comparison:
    """Where model B's attention parts ways with model A's on one prompt (`attnscope.inspector.compare`).

    Args:
        model_a, model_b: engines (`attnscope.load_model`) or names / paths to load in float32 on the CPU;
            A is the reference. Both must have the same layout and tokenize the prompt to the same ids.
        prompt: text or token ids.
        backend: the attention backend both run with (``auto``: the one model A's `Scope` chooses).
        atol, rtol: the tolerance (default: the looser default of the two models' dtypes).

    Returns:
        A `Comparison`: ``.first_divergence()``, ``.output_max`` / ``.probability_max`` / ``.js_mean``
        ``[L, Hq]``, ``.worst_head()``, ``.attention_diff(layer, head)``, ``.checks()``, ``.to_dict()``.
    """
    if isinstance(model_a, (str, Path)) or isinstance(model_b, (str, Path)):
        from attnscope.model.loader import load_model

        model_a = load_model(model_a) if isinstance(model_a, (str, Path)) else model_a
        model_b = load_model(model_b) if isinstance(model_b, (str, Path)) else model_b
    names = (model_a.name, model_b.name) if model_a.name != model_b.name else ("A", "B")
    require_same_layout(model_a.layout, model_b.layout, names)
    scope_a = Scope(model_a, backend=backend)
    own = getattr(model_a, "own_attention", None) or getattr(model_b, "own_attention", None)
    scope_b = Scope(model_b, backend=AUTO if own is not None else scope_a.backend)
    ids_a, ids_b = scope_a.encode(prompt), scope_b.encode(prompt)
    require_same_tokens(ids_a, ids_b, _texts(model_a, ids_a), _texts(model_b, ids_b), names)
    with torch.inference_mode():
        run_a = scope_a.forward(ids_a, residuals=True)
        run_b = scope_b.forward(ids_b, residuals=True)
    return compare_runs(run_a, run_b, prompt, tolerance_for(model_a.dtype, model_b.dtype, atol, rtol))


def _texts(model: Engine, ids: list[int]) -> list[str]:
    return model.tokenizer.token_texts(ids) if model.tokenizer is not None else [str(i) for i in ids]
