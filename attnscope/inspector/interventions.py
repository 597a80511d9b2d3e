"""Debug by experiment: change what chosen heads' attention gives and see what follows; bisect a
divergence to the layers that cause it.

An `Intervention` names a layer and query heads (or a kv head, meaning the query heads that read it)
and what their attention output becomes:

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
residual stream differs where attention does not) is said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnscope.backends import AttendFn, eager, require_features
from attnscope.engine import Engine
from attnscope.errors import ArgumentError
from attnscope.masks import HiddenKeys, MaskSpec

KINDS = ("zero", "mean", "reference", "patch", "hide")


@dataclass(frozen=True)
class Intervention:
    """What the attention output of `heads` (query heads; None: every head) of `layer` becomes."""

    kind: str
    layer: int
    heads: tuple[int, ...] | None = None
    keys: tuple[int, int] | None = None  # for "hide": keys lo <= key < hi

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ArgumentError("intervention", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "hide") != (self.keys is not None):
            raise ArgumentError("intervention", f"{self.kind}: keys are given with hide, and only with it")

    def __str__(self) -> str:
        heads = "" if self.heads is None else ":" + ",".join(map(str, self.heads))
        keys = "" if self.keys is None else f"[{self.keys[0]}:{self.keys[1]}]"
        return f"{self.kind}{keys}@{self.layer}{heads}"

    @classmethod
    def parse(cls, text: str) -> Intervention:
        """``KIND@LAYER[:H,H...]``, ``hide[LO:HI]@LAYER[:HEADS]``: "zero@3:1,2", "reference@5",
        "hide[0:4]@2:0"."""
        kind, at, where = text.strip().partition("@")
        keys = None
        if kind.startswith("hide[") and kind.endswith("]"):
            lo, _, hi = kind[5:-1].partition(":")
            kind, keys = "hide", (_int(lo, text), _int(hi, text))
        layer, _, heads = where.partition(":")
        if not at or not layer:
            raise ArgumentError("intervention", f"must read KIND@LAYER[:HEADS] (e.g. zero@3:1,2), got {text!r}")
        parsed = tuple(_int(h, text) for h in heads.split(",")) if heads else None
        return cls(kind, _int(layer, text), parsed, keys)

    def validate(self, n_layers: int, n_heads: int, length: int | None = None) -> None:
        """An `ArgumentError` for a layer, head or key range outside the model (or the prompt)."""
        if not 0 <= self.layer < n_layers:
            raise ArgumentError("intervention", f"{self}: layer must be in 0..{n_layers - 1}")
        bad = [h for h in self.heads or () if not 0 <= h < n_heads]
        if bad:
            raise ArgumentError("intervention", f"{self}: head {bad[0]} is not in 0..{n_heads - 1}")
        if self.keys is not None and not 0 <= self.keys[0] < self.keys[1] <= (length or self.keys[1]):
            raise ArgumentError("intervention", f"{self}: keys must be lo < hi within the prompt")


def _int(text: str, whole: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArgumentError("intervention", f"must read KIND@LAYER[:HEADS], got {whole!r}") from None


def kv_group(kv_head: int, n_heads: int, n_kv_heads: int) -> tuple[int, ...]:
    """The query heads that read `kv_head` (grouped-query attention)."""
    group = n_heads // n_kv_heads
    return tuple(range(kv_head * group, (kv_head + 1) * group))


def intervene(
    attend: AttendFn,
    interventions: Sequence[Intervention],
    n_layers: int,
    patches: dict[int, torch.Tensor] | None = None,
) -> AttendFn:
    """`attend` with `interventions` applied at their layers. `patches` (for ``patch``): per layer, the
    attention output ``[B, Hq, T, D]`` of another run on the same tokens."""
    by_layer: dict[int, list[Intervention]] = {}
    for iv in interventions:
        by_layer.setdefault(iv.layer, []).append(iv)
    calls = [0]

    def attend_with(q, k, v, mask: MaskSpec, scale: float, *, need_lse: bool = True, **features):
        layer = calls[0] % n_layers
        calls[0] += 1
        features = require_features(attend, features, f"layer {layer}")  # what the wrapped backend implements
        out, lse = attend(q, k, v, mask, scale, need_lse=need_lse, **features)
        for iv in by_layer.get(layer, ()):
            heads = list(iv.heads) if iv.heads is not None else slice(None)
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
                new = source[..., -out.shape[2] :, :][:, heads]  # the rows of this call (a cache's last ones)
            out = out.clone()
            out[:, heads] = new.to(out.dtype)
        return out, lse

    attend_with.__wrapped__ = attend  # type: ignore[attr-defined]
    return attend_with


@dataclass
class Effect:
    """What `interventions` changed on one prompt, against the same run without them."""

    interventions: list[Intervention]
    logits_max_abs_diff: float
    top1_agreement: float  # fraction of positions whose greedy next token is unchanged
    kl_per_position: list[float]  # KL(P_without || P_with) of the next-token distribution, nats
    layer_output_max_abs_diff: list[float]  # per layer, the largest change of its attention output
    changed_positions: list[int] = field(default_factory=list)  # positions whose greedy token changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "interventions": [str(iv) for iv in self.interventions],
            "logits_max_abs_diff": self.logits_max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "kl_max": max(self.kl_per_position, default=0.0),
            "kl_per_position": self.kl_per_position,
            "layer_output_max_abs_diff": self.layer_output_max_abs_diff,
            "changed_positions": self.changed_positions,
        }

    def summary(self) -> str:
        first = next((i for i, d in enumerate(self.layer_output_max_abs_diff) if d > 0), None)
        where = "no layer's attention output changed" if first is None else f"attention changes from layer {first}"
        return (
            f"{', '.join(map(str, self.interventions))}: logits max |Δ| {self.logits_max_abs_diff:.3g}, greedy "
            f"token kept at {self.top1_agreement:.0%} of positions, next-token KL max "
            f"{max(self.kl_per_position, default=0.0):.3g} nats; {where}"
        )


def compare_outputs(logits_a: torch.Tensor, logits_b: torch.Tensor) -> tuple[float, float, list[float], list[int]]:
    """Logits ``[T, vocab]`` of two runs: max |Δ|, greedy agreement, KL(A || B) per position, the
    positions whose greedy token differs."""
    a, b = logits_a.float(), logits_b.float()
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0)
    changed = (top_a != top_b).nonzero().flatten().tolist()
    return float((a - b).abs().max()), float((top_a == top_b).float().mean()), kl.tolist(), changed


def effect(
    model: Engine,
    attend: AttendFn,
    ids: torch.Tensor,
    interventions: Sequence[Intervention],
    patches: dict[int, torch.Tensor] | None = None,
) -> Effect:
    """Run `ids` ``[1, T]`` with and without `interventions` and measure what changed."""
    layout = model.layout
    for iv in interventions:
        iv.validate(layout.n_layers, layout.n_heads, ids.shape[1])
    base, base_out = _forward(model, attend, ids)
    changed, changed_out = _forward(model, intervene(attend, interventions, layout.n_layers, patches), ids)
    max_abs, top1, kl, positions = compare_outputs(base[0], changed[0])
    per_layer = [float((x.float() - y.float()).abs().max()) for x, y in zip(base_out, changed_out, strict=True)]
    return Effect(list(interventions), max_abs, top1, kl, per_layer, positions)


def _forward(model: Engine, attend: AttendFn, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every layer's attention output of one forward."""
    from attnscope.inspector.capture import OutputCapture

    capture = OutputCapture()
    with torch.inference_mode():
        logits = model.forward(ids, attend, recorder=capture)
    return logits.float(), [o.out for o in capture.layers()]


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

    def to_dict(self) -> dict[str, Any]:
        return {
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
                f"patching every layer's attention from A leaves B's output apart (greedy agreement {top1:.0%}, "
                f"logits max |Δ| {diff:.3g}): the residual stream differs where attention does not (MLPs, norms, "
                "embeddings)"
            )
        if not self.culprits:
            return "B's output already agrees with A's: nothing to bisect"
        layers = ", ".join(
            f"{layer} (heads {', '.join(map(str, self.heads[layer]))})" if layer in self.heads else str(layer)
            for layer in self.culprits
        )
        return f"culprit layers: {layers}: their attention taken from A restores B's output ({self.forwards} forwards)"


def bisect(
    model_a: Engine,
    model_b: Engine,
    attend: AttendFn,
    ids: torch.Tensor,
    *,
    attend_b: AttendFn | None = None,
    top1: float = 1.0,
    atol: float | None = None,
    heads: bool = True,
) -> Bisection:
    """The smallest set of layers of B whose attention output, patched from A's run on the same `ids`
    ``[1, T]``, makes B's greedy next tokens agree with A's on a `top1` fraction of positions (and,
    with `atol`, its logits within atol of A's); then, with `heads`, the query heads of each culprit
    layer that are needed. Adaptive group testing: O(k log L) forwards of B for k culprits.

    B runs with `attend_b` (default `attend`): the same model with another backend against the
    reference (``bisect(m, m, eager, ids, attend_b=kernel)``) is a pair too."""
    layout = model_b.layout
    logits_a, outputs_a = _forward(model_a, attend, ids)
    patches = dict(enumerate(outputs_a))
    run_b = attend if attend_b is None else attend_b
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
            run_b,
            [Intervention("patch", layer, None if hs is None else tuple(sorted(hs))) for layer, hs in by_layer.items()],
            layout.n_layers,
            patches,
        )
        logits_b, _ = _forward(model_b, patched, ids)
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
        return Bisection([], forwards, good(unpatched), [], every, unpatched)
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
    return Bisection(culprits, forwards, True, steps, every, unpatched, culprit_heads)


def bisect_pairs(model_a: Engine, model_b: Engine, comparisons: Sequence[Any], top1: float) -> dict[int, Bisection]:
    """`bisect` for each `attnscope.inspector.compare.Comparison` of the two models that is not
    identical, on its tokens and with the backend it ran: prompt index -> `Bisection`."""
    from attnscope.backends import get_backend

    return {
        n: bisect(model_a, model_b, get_backend(c.backend), c.run_a.inputs.ids[:1], top1=top1)
        for n, c in enumerate(comparisons)
        if not c.identical
    }
