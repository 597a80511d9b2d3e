"""Debug by experiment: change what chosen heads' attention gives and see what follows; bisect a
divergence to the layers that cause it.

An `Intervention` names a layer and query heads (or kv heads, meaning the query heads that read them:
``zero@1:kv1``) and what their attention output becomes:

- ``zero``: 0 (ablation);
- ``mean``: its mean over the positions of the forward (the head's average contribution);
- ``reference``: the eager float32 reference's output on the same q, k, v (is this layer's kernel the
  cause?);
- ``patch``: another run's output for the same tokens (model A's, in a comparison: activation patching);
- ``hide``: the same attention with the keys ``lo <= key < hi`` masked (what does the head read there?).

They act at the seam every layer's attention passes through, the attend function: `intervene` wraps a
backend's, counting its calls to know the layer (both engines call it once per layer, in order, per
forward). `effect` runs a prompt with and without them and measures what changed at the output (the
logits' largest difference, the greedy token's agreement, the KL divergence of the next-token
distribution per position) and in the later layers (each one's attention output).

`bisect` answers "which layers make B's output differ from A's": the smallest set of layers whose
attention, taken from A (patched into B's forward), brings B's greedy tokens back to A's (or its
logits within a tolerance), found by splitting the layers in halves: O(k log L) forwards for k
culprit layers. What patching every layer's attention leaves unexplained (the MLPs, the norms: the
residual stream differs where attention does not) is said. A pair is two models, one model with two
backends (a kernel against the eager reference), or one model run two ways: in parallel, and
through its KV cache in pieces (`bisect_incremental`; a patched call takes A's rows at its own
positions). `bisect_failures` bisects the pair behind a failed ``backend_vs_reference`` or
``full_vs_incremental`` check (``check --bisect``); `pair_effect` patches chosen heads of A into B
(``compare --intervene patch@...``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from attnscope.backends import AttendFn, eager, require_features
from attnscope.engine import Engine
from attnscope.errors import ArgumentError
from attnscope.masks import HiddenKeys, MaskSpec

KINDS = ("zero", "mean", "reference", "patch", "hide")
BISECTED = ("backend_vs_reference", "full_vs_incremental")  # the checks whose failure `bisect_check` bisects
RunB = Callable[[AttendFn], torch.Tensor]  # how a bisection runs B: its attend function -> logits [1, T, vocab]


@dataclass(frozen=True)
class Intervention:
    """What the attention output of `heads` (query heads; None: every head) of `layer` becomes."""

    kind: str
    layer: int
    heads: tuple[int, ...] | None = None
    keys: tuple[int, int] | None = None  # for "hide": keys lo <= key < hi
    kv_heads: tuple[int, ...] | None = None  # or kv heads: the query heads that read them

    def __post_init__(self):
        if self.heads is not None and self.kv_heads is not None:
            raise ArgumentError("intervention", f"{self.kind}: query heads or kv heads, not both")
        if self.kind not in KINDS:
            raise ArgumentError("intervention", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "hide") != (self.keys is not None):
            raise ArgumentError("intervention", f"{self.kind}: keys are given with hide, and only with it")

    def __str__(self) -> str:
        heads = "" if self.heads is None else ":" + ",".join(map(str, self.heads))
        heads += "" if self.kv_heads is None else ":" + ",".join(f"kv{h}" for h in self.kv_heads)
        keys = "" if self.keys is None else f"[{self.keys[0]}:{self.keys[1]}]"
        return f"{self.kind}{keys}@{self.layer}{heads}"

    @classmethod
    def parse(cls, text: str) -> Intervention:
        """``KIND@LAYER[:H,H...]``, ``hide[LO:HI]@LAYER[:HEADS]``, kv heads as ``kvN``: "zero@3:1,2",
        "reference@5", "hide[0:4]@2:0", "zero@1:kv1"."""
        kind, at, where = text.strip().partition("@")
        keys = None
        if kind.startswith("hide[") and kind.endswith("]"):
            lo, _, hi = kind[5:-1].partition(":")
            kind, keys = "hide", (_int(lo, text), _int(hi, text))
        layer, _, heads = where.partition(":")
        if not at or not layer:
            raise ArgumentError("intervention", f"must read KIND@LAYER[:HEADS] (e.g. zero@3:1,2), got {text!r}")
        items = heads.split(",") if heads else []
        kv = [item for item in items if item.startswith("kv")]
        if kv and len(kv) != len(items):
            raise ArgumentError("intervention", f"{text!r}: query heads or kv heads (kvN), not both")
        if kv:
            return cls(kind, _int(layer, text), None, keys, tuple(_int(item[2:], text) for item in kv))
        return cls(kind, _int(layer, text), tuple(_int(h, text) for h in items) if items else None, keys)

    def validate(self, n_layers: int, n_heads: int, length: int | None = None, n_kv_heads: int | None = None) -> None:
        """An `ArgumentError` for a layer, head or key range outside the model (or the prompt)."""
        if not 0 <= self.layer < n_layers:
            raise ArgumentError("intervention", f"{self}: layer must be in 0..{n_layers - 1}")
        bad = [h for h in self.heads or () if not 0 <= h < n_heads]
        if bad:
            raise ArgumentError("intervention", f"{self}: head {bad[0]} is not in 0..{n_heads - 1}")
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        bad = [h for h in self.kv_heads or () if not 0 <= h < n_kv]
        if bad:
            raise ArgumentError("intervention", f"{self}: kv head {bad[0]} is not in 0..{n_kv - 1}")
        if self.keys is not None and not 0 <= self.keys[0] < self.keys[1] <= (length or self.keys[1]):
            raise ArgumentError("intervention", f"{self}: keys must be lo < hi within the prompt")

    def query_heads(self, n_heads: int, n_kv_heads: int) -> tuple[int, ...] | None:
        """The query heads it acts on (None: every head)."""
        if self.kv_heads is None:
            return self.heads
        return tuple(h for kv in self.kv_heads for h in kv_group(kv, n_heads, n_kv_heads))


def _int(text: str, whole: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArgumentError("intervention", f"must read KIND@LAYER[:HEADS], got {whole!r}") from None


def kv_group(kv_head: int, n_heads: int, n_kv_heads: int) -> tuple[int, ...]:
    """The query heads that read `kv_head` (grouped-query attention)."""
    group = n_heads // n_kv_heads
    return tuple(range(kv_head * group, (kv_head + 1) * group))


def acted_on(interventions: Sequence[Intervention], n_heads: int, n_kv_heads: int) -> set[tuple[int, int]]:
    """The (layer, query head) pairs that `interventions` act on."""
    return {
        (iv.layer, h)
        for iv in interventions
        for h in iv.query_heads(n_heads, n_kv_heads) or range(n_heads)  # None: every head
    }


def toggle_head(
    interventions: Sequence[Intervention], layer: int, head: int, n_heads: int, n_kv_heads: int
) -> list[Intervention]:
    """`interventions` with query `head` of `layer` ablated (joined to the layer's ``zero`` of query
    heads, if it has one) when none acts on it, else with the head taken out of those that do (one that
    acted on every head, or on kv heads, then names the query heads left; one left with none goes)."""
    if (layer, head) not in acted_on(interventions, n_heads, n_kv_heads):
        zero = next((iv for iv in interventions if iv.kind == "zero" and iv.layer == layer and iv.heads), None)
        if zero is None:
            return [*interventions, Intervention("zero", layer, (head,))]
        joined = Intervention("zero", layer, tuple(sorted({*(zero.heads or ()), head})))
        return [joined if iv is zero else iv for iv in interventions]
    kept = []
    for iv in interventions:
        heads = iv.query_heads(n_heads, n_kv_heads) or tuple(range(n_heads))
        if iv.layer != layer or head not in heads:
            kept.append(iv)
        elif len(heads) > 1:
            kept.append(replace(iv, heads=tuple(h for h in heads if h != head), kv_heads=None))
    return kept


def intervene(
    attend: AttendFn,
    interventions: Sequence[Intervention],
    n_layers: int,
    patches: dict[int, torch.Tensor] | None = None,
) -> AttendFn:
    """`attend` with `interventions` applied at their layers. `patches` (for ``patch``): per layer, the
    attention output ``[B, Hq, T, D]`` of another run on the same tokens (all positions, padding
    included); a call through a KV cache takes the rows of its own positions (`_rows`)."""
    by_layer: dict[int, list[Intervention]] = {}
    for iv in interventions:
        by_layer.setdefault(iv.layer, []).append(iv)
    calls = [0]
    ends: dict[int, int] = {}  # per layer, the position after the last row its calls computed

    def attend_with(q, k, v, mask: MaskSpec, scale: float, *, need_lse: bool = True, **features):
        layer = calls[0] % n_layers
        calls[0] += 1
        rows = _rows(ends.get(layer), k.shape[-2], q.shape[-2])
        ends[layer] = rows.stop
        features = require_features(attend, features, f"layer {layer}")  # what the wrapped backend implements
        out, lse = attend(q, k, v, mask, scale, need_lse=need_lse, **features)
        for iv in by_layer.get(layer, ()):
            chosen = iv.query_heads(q.shape[1], k.shape[1])
            heads = list(chosen) if chosen is not None else slice(None)
            if iv.kind == "zero":
                new = torch.zeros_like(out[:, heads])
            elif iv.kind == "mean":
                new = out[:, heads].mean(2, keepdim=True).expand_as(out[:, heads])
            elif iv.kind == "reference":
                new = eager.attend(q.float(), k.float(), v.float(), mask, scale, **features)[0][:, heads]
            elif iv.kind == "hide":
                assert iv.keys is not None
                new = attend(q, k, v, mask & HiddenKeys(*iv.keys), scale, need_lse=False, **features)[0][:, heads]
            else:
                if patches is None or layer not in patches:
                    raise ArgumentError("intervention", f"{iv}: no output of another run to patch in")
                source = patches[layer]
                if rows.stop > source.shape[-2]:
                    raise ArgumentError(
                        "intervention", f"{iv}: the output to patch in ends at position {source.shape[-2] - 1}"
                    )
                new = source[:, :, rows][:, heads]  # (B, len(heads), Sq, D): this call's positions
            out = out.clone()
            out[:, heads] = new.to(out.dtype)
        return out, lse

    attend_with.__wrapped__ = attend  # type: ignore[attr-defined]
    attend_with.counts_calls = True  # type: ignore[attr-defined]  # see `attnscope.engine.in_pieces`
    return attend_with


def _rows(end: int | None, k_len: int, q_len: int) -> slice:
    """The positions of one attention call's `q_len` queries, given its `k_len` keys (cache included)
    and where the layer's previous call ended (None: no call yet). A call that sees only its own keys
    starts a sequence at position 0 (a parallel forward, a cache's first piece); one through a cache
    continues where the layer's last call ended (the pieces and decoding steps of one sequence, in
    order); the first call of a layer through a cache filled elsewhere (a copied prefix) takes the last
    positions of its keys, k_len - q_len .. k_len - 1 (bottom-right alignment). Counted rather than
    read off k_len: a cache that loses or repeats entries, the bug being bisected, keeps its rows."""
    if k_len == q_len or end is None:
        return slice(k_len - q_len, k_len)
    return slice(end, end + q_len)


@dataclass
class Effect:
    """What `interventions` changed on one prompt, against the same run without them."""

    interventions: list[Intervention]
    logits_max_abs_diff: float
    top1_agreement: float  # fraction of positions whose greedy next token is unchanged
    kl_per_position: list[float]  # KL(P_without || P_with) of the next-token distribution, nats
    layer_output_max_abs_diff: list[float]  # per layer, the largest change of its attention output
    changed_positions: list[int] = field(default_factory=list)  # positions whose greedy token changed
    # the greedy continuation of the prompt without and with the interventions (`new_tokens` of `effect`)
    continuation: tuple[list[int], list[int]] = ([], [])
    continuation_texts: tuple[str, str] = ("", "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "interventions": [str(iv) for iv in self.interventions],
            "logits_max_abs_diff": self.logits_max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "kl_max": max(self.kl_per_position, default=0.0),
            "kl_per_position": self.kl_per_position,
            "layer_output_max_abs_diff": self.layer_output_max_abs_diff,
            "changed_positions": self.changed_positions,
            "continuation": {
                "without": self.continuation[0],
                "with": self.continuation[1],
                "without_text": self.continuation_texts[0],
                "with_text": self.continuation_texts[1],
                "first_change": self.continuation_change,
            },
        }

    @property
    def continuation_change(self) -> int | None:
        """The first new token where the continuation with the interventions differs (None: same)."""
        without, with_ = self.continuation
        return next((i for i, (a, b) in enumerate(zip(without, with_, strict=False)) if a != b), None)

    def summary(self) -> str:
        first = next((i for i, d in enumerate(self.layer_output_max_abs_diff) if d > 0), None)
        where = "no layer's attention output changed" if first is None else f"attention changes from layer {first}"
        line = (
            f"{', '.join(map(str, self.interventions))}: logits max |Δ| {self.logits_max_abs_diff:.3g}, greedy "
            f"token kept at {self.top1_agreement:.0%} of positions, next-token KL max "
            f"{max(self.kl_per_position, default=0.0):.3g} nats; {where}"
        )
        if not self.continuation[0]:
            return line
        n, change = len(self.continuation[0]), self.continuation_change
        without, with_ = self.continuation_texts
        if change is None:
            return f"{line}; the {n}-token continuation is unchanged: {without!r}"
        return f"{line}; the {n}-token continuation changes at token {change}: {without!r} -> {with_!r}"


def compare_outputs(logits_a: torch.Tensor, logits_b: torch.Tensor) -> tuple[float, float, list[float], list[int]]:
    """Logits ``[T, vocab]`` of two runs: max |Δ|, greedy agreement, KL(A || B) per position, the
    positions whose greedy token differs."""
    a, b = logits_a.float(), logits_b.float()
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0)
    changed = (top_a != top_b).nonzero().flatten().tolist()
    return float((a - b).abs().max()), float((top_a == top_b).float().mean()), kl.tolist(), changed


def effect_between(
    interventions: Sequence[Intervention],
    without: tuple[torch.Tensor, Sequence[torch.Tensor]],
    with_: tuple[torch.Tensor, Sequence[torch.Tensor]],
) -> Effect:
    """The `Effect` of `interventions` on one prompt from its runs without and with them: each run's
    logits ``[T, vocab]`` and every layer's attention output (`effect` runs them; so does
    `attnscope.session.Session.intervene`)."""
    max_abs, top1, kl, positions = compare_outputs(without[0], with_[0])
    per_layer = [float((x.float() - y.float()).abs().max()) for x, y in zip(without[1], with_[1], strict=True)]
    return Effect(list(interventions), max_abs, top1, kl, per_layer, positions)


def effect(
    model: Engine,
    attend: AttendFn,
    ids: torch.Tensor,
    interventions: Sequence[Intervention],
    patches: dict[int, torch.Tensor] | None = None,
    new_tokens: int = 0,
) -> Effect:
    """Run `ids` ``[1, T]`` with and without `interventions` and measure what changed; with
    `new_tokens`, also the greedy continuation of that many tokens each way (the interventions act at
    every decoding step too: ``mean`` there is the mean over the step's own position)."""
    layout = model.layout
    for iv in interventions:
        iv.validate(layout.n_layers, layout.n_heads, ids.shape[1], layout.n_kv_heads)
    changed_attend = intervene(attend, interventions, layout.n_layers, patches)
    base, base_out, without = _forward(model, attend, ids, new_tokens)
    changed, changed_out, with_ = _forward(model, changed_attend, ids, new_tokens)
    found = effect_between(interventions, (base[0], base_out), (changed[0], changed_out))
    if new_tokens > 0:
        found.continuation = (without, with_)
        tok = model.tokenizer
        if tok is not None:
            found.continuation_texts = (tok.decode(without), tok.decode(with_))
        else:
            found.continuation_texts = (" ".join(map(str, without)), " ".join(map(str, with_)))
    return found


def _forward(
    model: Engine, attend: AttendFn, ids: torch.Tensor, new_tokens: int = 0
) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Logits and every layer's attention output of one forward of `ids` ``[1, T]``, and, with
    `new_tokens`, the greedy continuation that follows it through a KV cache the forward filled (ids;
    fewer at an end of sequence)."""
    from attnscope.inspector.capture import OutputCapture

    capture = OutputCapture()
    cache = model.new_cache(1, ids.shape[1] + new_tokens) if new_tokens > 0 else None
    with torch.inference_mode():
        logits = model.forward(ids, attend, cache=cache, recorder=capture)
        new = model.decode(logits, cache, attend, new_tokens)[0].tolist() if new_tokens > 0 else []
    return logits.float(), [o.out for o in capture.layers()], new


@dataclass
class PairEffect:
    """What interventions on B's forward (``patch``: A's attention output at those heads, on the same
    tokens) changed: against B without them (`effect`) and against A, before and after."""

    effect: Effect  # B with the interventions against B without
    plain: tuple[float, float]  # B without them against A: (greedy agreement, logits max |Δ|)
    changed: tuple[float, float]  # B with them against A

    def to_dict(self) -> dict[str, Any]:
        def figures(found: tuple[float, float]) -> dict[str, float]:
            return {"top1_agreement": found[0], "logits_max_abs_diff": found[1]}

        return {**self.effect.to_dict(), "against_a": {"without": figures(self.plain), "with": figures(self.changed)}}

    def summary(self) -> str:
        (top1, diff), (top1_with, diff_with) = self.plain, self.changed
        return (
            f"{self.effect.summary()}; against A: greedy agreement {top1:.0%} -> {top1_with:.0%}, logits max |Δ| "
            f"{diff:.3g} -> {diff_with:.3g}"
        )


def pair_effect(
    model_a: Engine, model_b: Engine, attend: AttendFn, ids: torch.Tensor, interventions: Sequence[Intervention]
) -> PairEffect:
    """`effect` of `interventions` on `model_b`'s forward of `ids` ``[1, T]``, ``patch`` taking
    `model_a`'s attention output on the same ids (activation patching), and B's output against A's
    without and with them; both models with `attend`."""
    logits_a, outputs_a, _ = _forward(model_a, attend, ids)
    patches = dict(enumerate(outputs_a))
    found = effect(model_b, attend, ids, interventions, patches)
    plain = _forward(model_b, attend, ids)[0]
    changed = _forward(model_b, intervene(attend, interventions, model_b.layout.n_layers, patches), ids)[0]
    against = [compare_outputs(logits_a[0], logits[0]) for logits in (plain, changed)]
    return PairEffect(found, (against[0][1], against[0][0]), (against[1][1], against[1][0]))


@dataclass
class Bisection:
    """The layers whose attention, taken from A, restores B's output (see the module docstring)."""

    culprits: list[int]
    forwards: int  # forwards of B the search took
    restored: bool  # patching the culprits restores B's output by the criterion
    # (layers patched, top-1 agreement, logits max |Δ|) as each culprit joins
    steps: list[tuple[list[int], float, float]]
    all_layers: tuple[float, float]  # (top-1 agreement, logits max |Δ|) with every layer patched
    unpatched: tuple[float, float]  # the same with none
    heads: dict[int, list[int]] = field(default_factory=dict)  # per culprit layer, the query heads needed
    a: str = "A"  # what each side is, in the summary: "the eager reference", "the incremental decoding"
    b: str = "B"

    @property
    def output_differs(self) -> bool:
        """Whether B's output differs from A's by the criterion without any patch (else nothing to bisect)."""
        return bool(self.culprits) or not self.restored

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "a": self.a,
            "b": self.b,
            "output_differs": self.output_differs,
            "culprits": self.culprits,
            "heads": {str(layer): heads for layer, heads in self.heads.items()},
            "forwards": self.forwards,
            "restored": self.restored,
            "steps": [{"layers": s, "top1_agreement": t, "logits_max_abs_diff": d} for s, t, d in self.steps],
            "every_layer_patched": {"top1_agreement": self.all_layers[0], "logits_max_abs_diff": self.all_layers[1]},
            "none_patched": {"top1_agreement": self.unpatched[0], "logits_max_abs_diff": self.unpatched[1]},
        }

    def summary(self) -> str:
        if not self.restored:
            top1, diff = self.all_layers
            return (
                f"patching every layer's attention from {self.a} leaves {self.b}'s output apart (greedy agreement "
                f"{top1:.0%}, logits max |Δ| {diff:.3g}): the residual stream differs where attention does not "
                "(MLPs, norms, embeddings)"
            )
        if not self.culprits:
            top1, diff = self.unpatched
            return (
                f"{self.b}'s output already agrees with {self.a}'s (greedy agreement {top1:.0%}, logits max |Δ| "
                f"{diff:.3g}): nothing to bisect"
            )
        layers = ", ".join(
            f"{layer} (heads {', '.join(map(str, self.heads[layer]))})" if layer in self.heads else str(layer)
            for layer in self.culprits
        )
        return (
            f"culprit layers: {layers}: their attention taken from {self.a} restores {self.b}'s output "
            f"({self.forwards} forwards)"
        )


def bisect(
    model_a: Engine,
    model_b: Engine,
    attend: AttendFn,
    ids: torch.Tensor,
    *,
    attend_b: AttendFn | None = None,
    run_b: RunB | None = None,
    top1: float = 1.0,
    atol: float | None = None,
    heads: bool = True,
    names: tuple[str, str] = ("A", "B"),
) -> Bisection:
    """The smallest set of layers of B whose attention output, patched from A's run on the same `ids`
    ``[1, T]``, makes B's greedy next tokens agree with A's on a `top1` fraction of positions (and,
    with `atol`, its logits within atol of A's); then, with `heads`, the query heads of each culprit
    layer that are needed. Adaptive group testing: O(k log L) forwards of B for k culprits.

    A is one parallel forward of `model_a` with `attend`. B runs with `attend_b` (default `attend`):
    the same model with another backend against the reference (``bisect(m, m, eager, ids,
    attend_b=kernel)``) is a pair too. `run_b` says how B runs, given the attend function to run it
    with (patched): the logits ``[1, T, vocab]``; default one parallel forward of `model_b` on `ids`;
    `pieces_run` runs it through the KV cache in pieces (`bisect_incremental`). `names` name A and B
    in the summary."""
    layout = model_b.layout
    logits_a, outputs_a, _ = _forward(model_a, attend, ids)
    patches = dict(enumerate(outputs_a))
    attend_b = attend if attend_b is None else attend_b
    if run_b is None:
        run_b = functools.partial(model_b.forward, ids)
    forwards = 0

    def measure(units: Sequence[tuple[int, int | None]]) -> tuple[float, float]:
        nonlocal forwards
        forwards += 1
        by_layer: dict[int, list[int] | None] = {}
        for layer, head in units:
            if head is None or by_layer.get(layer, []) is None:
                by_layer[layer] = None
            else:
                by_layer.setdefault(layer, []).append(head)  # type: ignore[union-attr]
        patched = intervene(
            attend_b,
            [Intervention("patch", layer, None if hs is None else tuple(sorted(hs))) for layer, hs in by_layer.items()],
            layout.n_layers,
            patches,
        )
        with torch.inference_mode():
            logits_b = run_b(patched)
        diff, agreement, _, _ = compare_outputs(logits_a[0], logits_b[0])
        return agreement, diff

    def good(found: tuple[float, float]) -> bool:
        return found[0] >= top1 and (atol is None or found[1] <= atol)

    def search(candidates: list, base: list) -> list:
        # patching base + candidates restores, base alone does not
        if len(candidates) == 1:
            return candidates
        left, right = candidates[: len(candidates) // 2], candidates[len(candidates) // 2 :]
        if good(measure(base + left)):
            return search(left, base)
        if good(measure(base + right)):
            return search(right, base)
        found_left = search(left, base + right)
        return found_left + search(right, base + found_left)

    every_layer = [(layer, None) for layer in range(layout.n_layers)]
    unpatched, every = measure([]), measure(every_layer)
    if good(unpatched) or not good(every):
        return Bisection([], forwards, good(unpatched), [], every, unpatched, a=names[0], b=names[1])
    culprits = sorted(layer for layer, _ in search(every_layer, []))
    culprit_heads: dict[int, list[int]] = {}
    if heads:
        for layer in culprits:
            others = [(other, None) for other in culprits if other != layer]
            units = [(layer, h) for h in range(layout.n_heads)]
            culprit_heads[layer] = sorted(h for _, h in search(units, others))  # type: ignore[misc]
    steps = []
    for i in range(1, len(culprits) + 1):
        agreement, diff = measure([(layer, None) for layer in culprits[:i]])
        steps.append((culprits[:i], agreement, diff))
    return Bisection(culprits, forwards, True, steps, every, unpatched, culprit_heads, names[0], names[1])


def pieces_run(model: Engine, ids: torch.Tensor, pieces: Sequence[int]) -> RunB:
    """How to run `ids` ``[1, T]`` through a fresh KV cache of `model` in `pieces` (chunks or single
    tokens, `attnscope.engine.in_pieces`), as a `bisect` B: attend function -> logits."""
    from attnscope.engine import in_pieces

    def run(attend: AttendFn) -> torch.Tensor:
        return in_pieces(model, ids, attend, pieces=pieces, cache=model.new_cache(1, ids.shape[1]))

    return run


def bisect_incremental(
    model: Engine, attend: AttendFn, ids: torch.Tensor, pieces: Sequence[int] | None = None, **options: Any
) -> Bisection:
    """`bisect` of the full-vs-incremental pair: A the parallel forward of `ids` ``[1, T]``, B the same
    model through its KV cache in `pieces` (default: one token a piece; an incremental mode's are
    ``parse_mode(mode).plan(T).pieces``), both with `attend`; the layers whose attention, taken from the
    parallel forward at the same positions, brings the incremental logits back to the parallel ones.
    `options` as `bisect`'s (top1, atol, heads)."""
    pieces = [1] * ids.shape[1] if pieces is None else list(pieces)
    run_b = pieces_run(model, ids, pieces)
    names = ("the full forward", "the incremental decoding")
    return bisect(model, model, attend, ids, run_b=run_b, names=names, **options)


def bisect_check(run: Any, check: str, *, top1: float = 1.0, pieces: Sequence[int] | None = None) -> Bisection:
    """`bisect` of the pair behind a failed check of `run` (an `attnscope.inspector.run.Run`), on its
    first row's tokens: ``backend_vs_reference``: the run's backend (B) against the eager reference (A),
    the same model in its own dtype; ``full_vs_incremental``: the incremental decoding in `pieces` (B)
    against the parallel forward (A), with the run's backend (`bisect_incremental`)."""
    ids = run.inputs.ids[:1, run.inputs.real[0]]  # (1, T) the real tokens
    if check == "backend_vs_reference":
        names = ("the eager reference", run.backend)
        return bisect(run.model, run.model, eager.attend, ids, attend_b=run.attend, top1=top1, names=names)
    if check == "full_vs_incremental":
        return bisect_incremental(run.model, run.attend, ids, pieces, top1=top1)
    raise ValueError(f"no pair to bisect behind the {check} check")


def bisect_failures(
    run: Any, checks: Sequence[Any], *, top1: float = 1.0, incremental: Any = None
) -> list[tuple[str, Bisection]]:
    """`bisect_check` of each failed check of `checks` (`attnscope.inspector.report.Check`) that has a
    pair (`BISECTED`), the incremental one in the pieces of mode `incremental`
    (`attnscope.inspector.incremental.parse_mode`); each such check's figures hold its ``bisect``.
    Returns (check name, `Bisection`) in the checks' order."""
    from attnscope.inspector.incremental import parse_mode

    found = []
    for check in checks:
        if check.passed or check.name not in BISECTED:
            continue
        pieces = parse_mode(incremental).plan(int(run.inputs.real[0].sum())).pieces
        bisection = bisect_check(run, check.name, top1=top1, pieces=pieces)
        check.figures["bisect"] = bisection.to_dict()
        found.append((check.name, bisection))
    return found


def pair_effects(
    model_a: Engine, model_b: Engine, comparisons: Sequence[Any], interventions: Sequence[Intervention]
) -> dict[int, PairEffect]:
    """`pair_effect` of `interventions` for each `attnscope.inspector.compare.Comparison` of the two
    models, on its tokens and with the backend it ran: prompt index -> `PairEffect`."""
    from attnscope.backends import get_backend

    return {
        n: pair_effect(model_a, model_b, get_backend(c.backend), c.run_a.inputs.ids[:1], interventions)
        for n, c in enumerate(comparisons)
    }


def bisect_pairs(model_a: Engine, model_b: Engine, comparisons: Sequence[Any], top1: float) -> dict[int, Bisection]:
    """`bisect` for each `attnscope.inspector.compare.Comparison` of the two models that is not
    identical, on its tokens and with the backend it ran: prompt index -> `Bisection`."""
    from attnscope.backends import get_backend

    return {
        n: bisect(model_a, model_b, get_backend(c.backend), c.run_a.inputs.ids[:1], top1=top1)
        for n, c in enumerate(comparisons)
        if not c.identical
    }
