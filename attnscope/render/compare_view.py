"""What `attnscope compare` prints for one prompt: the first divergence, the logits, the layer × head
map of the mean Jensen–Shannon divergence, and the difference heatmap of the worst head."""

from __future__ import annotations

import numpy as np
from rich.console import RenderableType
from rich.text import Text

from attnscope.render.diffmap import DiffMap
from attnscope.render.heatmap import head_heatmap

TOP_HEADS = 5  # heads listed by their divergence


def _short(text: str, width: int = 40) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def compare_view(comparison, *, width: int, log: bool = False) -> list:
    """The renderables of one `attnscope.inspector.compare.Comparison`."""
    a, b = comparison.run_a.model.name, comparison.run_b.model.name
    prompt = comparison.prompt
    shown = repr(_short(prompt)) if isinstance(prompt, str) else f"{len(comparison.ids)} token ids"
    divergence, logits = comparison.checks()
    parts: list[RenderableType] = [
        Text(f"prompt {shown} · {len(comparison.ids)} tokens", style="bold"),
        Text(("✓ " if divergence.passed else "✗ ") + divergence.message, style="green" if divergence.passed else "red"),
        Text(("✓ " if logits.passed else "✗ ") + logits.message, style="green" if logits.passed else "red"),
        Text(),
    ]
    tol = comparison.tolerance
    parts += [
        DiffMap(
            comparison.js_mean,
            comparison.heads_over,
            title=f"{b} vs {a} · mean Jensen–Shannon divergence of the attention rows per layer × head "
            f"(nats) · ✗ output or probabilities over atol {tol.atol:.0e}",
            measure="mean JS",
        ),
        Text(),
    ]
    js_all = comparison.js_mean
    order = np.argsort(-np.nan_to_num(js_all, nan=np.inf), axis=None)[:TOP_HEADS]
    ranked = [np.unravel_index(i, js_all.shape) for i in order]
    parts += [
        Text("heads most changed (mean JS): " + ", ".join(f"L{lr} h{h} {js_all[lr, h]:.2e}" for lr, h in ranked)),
        Text(),
    ]
    layer, head = comparison.worst_head()
    js, prob = comparison.js_mean[layer, head], comparison.probability_max[layer, head]
    rec = comparison.records[layer]
    title = (
        f"|P({b}) − P({a})| · layer {layer} · head {head} (kv {head // rec.group_size}) · the largest mean JS "
        f"divergence ({js:.2e}; max |Δp| {prob:.2e})"
    )
    parts.append(head_heatmap(comparison, layer, head, width=width, log=log, title=title))
    return parts
