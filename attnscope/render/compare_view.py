"""What `attnscope compare` prints for one prompt: the first divergence, the logits, the layer × head
map of the mean Jensen–Shannon divergence (colored by its own range, ✗ over tolerance), and the
difference heatmap of the worst head; or one line when the two runs are identical."""

from __future__ import annotations

import numpy as np
from rich.console import RenderableType
from rich.text import Text

from attnscope.render.diffmap import IDENTICAL, RangeMap
from attnscope.render.heatmap import head_heatmap

TOP_HEADS = 5  # heads listed by their divergence


def _short(text: str, width: int = 40) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def model_label(model) -> str:
    """A model as the header names it: "tiny-code (float32, native)"."""
    return f"{model.name} ({str(model.dtype).removeprefix('torch.')}, {model.engine})"


def models_line(comparison) -> str:
    """Both models with their dtype and engine: "A tiny-code (float32, native) · B … (bfloat16, native)"."""
    return f"A {model_label(comparison.run_a.model)} · B {model_label(comparison.run_b.model)}"


def bisection_view(bisections: dict, prompts: list[str]) -> list[Text]:
    """What `attnscope bisect` found per prompt (`attnscope.inspector.interventions.Bisection`): the
    culprit layers, then B's output as each joins, or what patching attention leaves unexplained."""
    parts = []
    for n, found in bisections.items():
        parts += bisection_lines(f"bisect · {prompt_label(n, prompts[n])}", found)
    return parts


def prompt_label(n: int, prompt: str) -> str:
    """Prompt `n` (from 0) as compare's experiments name it: "prompt 1 'def f(x):'"."""
    return f"prompt {n + 1} {_short(prompt)!r}"


def bisection_lines(heading: str, found) -> list[Text]:
    """One `attnscope.inspector.interventions.Bisection` under `heading`: its summary, then the output
    with none patched and as each culprit joins (`compare --bisect`, `check --bisect`)."""
    parts = [Text(f"{heading}: {found.summary()}", style="bold")]
    if found.output_differs:
        top1, diff = found.unpatched
        parts.append(Text(f"  none patched: greedy agreement {top1:.0%}, logits max |Δ| {diff:.3g}"))
        for layers, top1, diff in found.steps:
            parts.append(Text(f"  + layer {layers[-1]}: greedy agreement {top1:.0%}, logits max |Δ| {diff:.3g}"))
    parts.append(Text())
    return parts


def identical_line(comparisons: list) -> Text:
    """The one line of comparisons that are all identical, with the models compared (print it with
    ``soft_wrap=True``: one line however narrow the terminal)."""
    n = len(comparisons)
    tokens = sum(len(c.ids) for c in comparisons)
    where = f"1 prompt, {tokens} tokens" if n == 1 else f"{n} prompts, {tokens} tokens"
    line = f"{IDENTICAL} ({where}) · {models_line(comparisons[0])} · {comparisons[0].backend}"
    return Text(line, style="green")


def compare_view(comparison, *, width: int, log: bool = False) -> list:
    """The renderables of one `attnscope.inspector.compare.Comparison`."""
    a, b = comparison.run_a.model.name, comparison.run_b.model.name
    if a == b:  # one model in two dtypes or engines: the header names which is which
        a, b = "A", "B"
    prompt = comparison.prompt
    shown = repr(_short(prompt)) if isinstance(prompt, str) else f"{len(comparison.ids)} token ids"
    if comparison.identical:
        return [Text(f"prompt {shown} · {len(comparison.ids)} tokens · {IDENTICAL}", style="green")]
    divergence, logits = comparison.checks()
    parts: list[RenderableType] = [
        Text(f"prompt {shown} · {len(comparison.ids)} tokens", style="bold"),
        Text(("✓ " if divergence.passed else "✗ ") + divergence.message, style="green" if divergence.passed else "red"),
        Text(("✓ " if logits.passed else "✗ ") + logits.message, style="green" if logits.passed else "red"),
        Text(),
    ]
    tol = comparison.tolerance
    js_all = comparison.js_mean
    parts += [
        RangeMap(
            js_all,
            comparison.heads_over,
            tol.atol,
            title=f"{b} vs {a} · mean Jensen–Shannon divergence of the attention rows per layer × head (nats)",
            measure="mean JS",
            over_means=f"output or probabilities over atol {tol.atol:.0e}",
            on_scale=False,  # a divergence, not in the tolerance's unit
        ),
        Text(),
    ]
    order = np.argsort(-np.nan_to_num(js_all, nan=np.inf), axis=None)[:TOP_HEADS]
    ranked = [np.unravel_index(i, js_all.shape) for i in order if not js_all.flat[i] == 0]
    if ranked:
        listed = ", ".join(f"L{lr} h{h} {js_all[lr, h]:.2e}" for lr, h in ranked)
        parts += [Text(f"heads most changed (mean JS): {listed}"), Text()]
    layer, head = comparison.worst_head()
    js, prob = comparison.js_mean[layer, head], comparison.probability_max[layer, head]
    if not ranked and prob == 0:
        parts.append(Text("no head's attention probabilities differ (mean JS and max |Δp| 0 in every head)"))
        return parts
    rec = comparison.records[layer]
    title = (
        f"|P({b}) − P({a})| · layer {layer} · head {head} (kv {head // rec.group_size}) · the largest mean JS "
        f"divergence ({js:.2e}; max |Δp| {prob:.2e})"
    )
    parts.append(head_heatmap(comparison, layer, head, width=width, log=log, title=title))
    return parts
