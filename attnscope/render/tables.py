"""Rich renderables of a Report: header, tokens, continuation, per-layer head statistics."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from attnscope.inspector.report import Check, Report
from attnscope.render.heatmap import label

MAX_TOKENS_SHOWN = 96  # longer prompts show their first and last tokens

STATS = (("entropy", "entropy", "mean attention entropy (nats)"),
         ("max_weight", "max w", "mean of each row's largest weight"),
         ("first_token_mass", "sink", "mean weight on the first token"))


def header(report: Report) -> Text:
    m = report.model
    text = Text()
    text.append("attnscope ", style="bold magenta")
    text.append(f"{m['name']}", style="bold")
    text.append(f"  {m['model_type']} · {m['layers']} layers · {m['heads']} q / {m['kv_heads']} kv heads · "
                f"head_dim {m['head_dim']}\n")
    text.append(f"engine {m.get('engine', 'native')} · backend {report.backend} · reference {report.reference} · "
                f"{report.device} · {report.dtype}", style="dim")
    return text


def tokens(report: Report) -> Text:
    text = Text()
    text.append(f"prompt ({len(report.tokens)} tokens)\n", style="bold")
    shown = report.tokens
    if len(shown) > MAX_TOKENS_SHOWN:
        shown = [*report.tokens[: MAX_TOKENS_SHOWN - 16], None, *report.tokens[-16:]]
    for tok in shown:
        if tok is None:
            text.append(f"… {len(report.tokens) - MAX_TOKENS_SHOWN} more …  ", style="bold dim")
            continue
        text.append(f"{tok.index}:", style="dim")
        text.append(f"{label(tok.text, 16)}  ", style="cyan")
    if report.continuation:
        text.append(f"\ncontinuation ({len(report.continuation)} tokens, greedy)\n", style="bold")
        text.append("".join(tok.text for tok in report.continuation), style="green")
    return text


def head_table(report: Report) -> Table:
    """One row per (layer, statistic), one column per query head."""
    n_heads = len(report.layers[0].heads) if report.layers else 0
    kv = [h.kv_head for h in report.layers[0].heads] if report.layers else []
    table = Table(title="attention per head (mean over query rows)", title_justify="left",
                  caption="entropy: nats (uniform over T keys = ln T) · max w: row max · sink: weight on token 0",
                  caption_justify="left", pad_edge=False, box=None, header_style="bold")
    table.add_column("layer", justify="right")
    table.add_column("stat")
    for h in range(n_heads):
        table.add_column(f"h{h}·kv{kv[h]}", justify="right")
    with_roles = any(h.role_scores is not None for layer in report.layers for h in layer.heads)
    for layer in report.layers:
        for n, (key, short, _) in enumerate(STATS):
            values = [getattr(h, key) for h in layer.heads]
            cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in values]
            last = n == len(STATS) - 1 and not with_roles
            table.add_row(str(layer.index) if n == 0 else "", short, *cells, end_section=last)
        if with_roles:
            table.add_row("", "role", *[Text(ROLE_SHORT.get(h.role, "·"), style=ROLE_STYLE.get(h.role, "dim"))
                                         for h in layer.heads], end_section=True)
    return table


ROLE_SHORT = {"induction": "induct", "previous_token": "prev", "sink": "sink", "local": "local",
              "broad": "broad"}
ROLE_STYLE = {"induction": "bold magenta", "previous_token": "bold cyan", "sink": "yellow", "local": "green",
              "broad": "dim"}


def roles_table(report: Report) -> Table:
    """One row per head: its role scores and the role (attnscope heads)."""
    table = Table(title="head roles", title_justify="left", box=None, header_style="bold", pad_edge=False,
                  caption="scores in [0, 1]; a role is named when its score passes the threshold "
                          "(induction 0.4, prev 0.5, sink 0.6, local 0.8, broad 0.9)", caption_justify="left")
    for name in ("layer", "head", "kv", "induct", "prev", "sink", "local", "broad", "role"):
        table.add_column(name, justify="left" if name == "role" else "right")
    for layer in report.layers:
        for h in layer.heads:
            s = h.role_scores or {}
            scores = [s.get(k, "–") for k in ("induction", "previous_token", "sink", "local", "broad")]
            cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in scores]  # "nan" is written as is
            table.add_row(str(layer.index), str(h.head), str(h.kv_head), *cells,
                          Text(h.role or "–", style=ROLE_STYLE.get(h.role, "dim")),
                          end_section=h.head == len(layer.heads) - 1)
    return table


def worst_figure(check: Check) -> str:
    f = check.figures
    for key in ("max_abs_diff", "max_weight_sum_error"):
        if key in f:
            value = f[key]
            return f"max |Δ| {value:.2e}" if isinstance(value, float) else f"max |Δ| {value}"
    if "nonfinite_counts" in f:
        return f"{sum(f['nonfinite_counts'].values())} non-finite"
    return ""


def where_text(check: Check) -> str:
    w = check.where or {}
    parts = [f"{k} {w[k]}" for k in ("layer", "head", "position", "stage") if w.get(k) is not None]
    return " · ".join(parts)


def checks_table(rows: list[tuple[str, Check]], title: str = "checks") -> Table:
    """One row per check: ✓/✗, name, run label, worst figure, where, message."""
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    labelled = len({run_label for run_label, _ in rows}) > 1
    table.add_column("")
    table.add_column("check", no_wrap=True)
    if labelled:
        table.add_column("run", overflow="ellipsis", max_width=28, no_wrap=True)
    table.add_column("worst", justify="right", no_wrap=True)
    table.add_column("where")
    table.add_column("finding", overflow="fold", ratio=1)
    for run_label, check in rows:
        mark = Text("✓", style="green") if check.passed else Text("✗", style="bold red")
        cells = [mark, check.name, *([run_label] if labelled else []), worst_figure(check), where_text(check),
                 Text(check.message, style="" if check.passed else "red")]
        table.add_row(*cells)
    return table


def number_text(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, float) else str(value)


def layer_table(report: Report) -> Table:
    """One row per layer: its mask, head statistics over the heads, NaN count and the checks'
    largest differences, red where a check found a problem."""
    table = Table(title="layers", title_justify="left", box=None, header_style="bold", pad_edge=False,
                  caption="entropy min–max over heads (nats) · sink: largest mean weight on token 0 · "
                          "Δ inc: full vs incremental · Δ ref: backend vs eager",
                  caption_justify="left")
    for name, justify in (("layer", "right"), ("mask", "left"), ("entropy", "right"), ("sink", "right"),
                          ("max w", "right"), ("NaN", "right"), ("Δ inc", "right"), ("Δ ref", "right")):
        table.add_column(name, justify=justify, overflow="fold")
    for layer in report.layers:
        heads = layer.heads
        ent = [h.entropy for h in heads if isinstance(h.entropy, float)]
        flagged = {f for h in heads for f in h.flags}

        def delta(key, check, heads=heads, flagged=flagged):
            values = [getattr(h, key) for h in heads if getattr(h, key) is not None]
            if not values:
                return Text("–", style="dim")
            worst = max(values, key=lambda v: float("inf") if isinstance(v, str) else v)
            return Text(number_text(worst, ".1e"), style="bold red" if check in flagged else "")

        nan = sum(h.nonfinite for h in heads)
        table.add_row(
            str(layer.index), layer.mask,
            f"{min(ent):.2f}–{max(ent):.2f}" if ent else "nan",
            number_text(max((h.first_token_mass for h in heads), key=lambda v: v if isinstance(v, float) else 0),
                        ".2f"),
            f"{sum(h.max_weight for h in heads if isinstance(h.max_weight, float)) / len(heads):.2f}",
            Text(str(nan), style="bold red" if nan else ""),
            delta("full_vs_incremental", "full_vs_incremental"),
            delta("backend_vs_reference", "backend_vs_reference"),
        )
    return table


def run_report(report: Report) -> Group:
    """Header, tokens and continuation, the layer table, the per-head table and the checks."""
    parts = [header(report), Text(), tokens(report), Text(), layer_table(report), Text(), head_table(report)]
    if report.checks:
        parts += [Text(), checks_table([("", c) for c in report.checks])]
    return Group(*parts)


def models_table() -> Table:
    """The bundled sample models: name (the default marked), size on disk, the card's first line."""
    from attnscope.model.loader import DEFAULT_MODEL, model_card_summary, sample_models

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("name", "size", "description"):
        table.add_column(col)
    for name, path in sample_models().items():
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        table.add_row(f"{name} (default)" if name == DEFAULT_MODEL else name, f"{size / 1e6:.1f} MB",
                      model_card_summary(path))
    return table
