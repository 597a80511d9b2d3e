"""Rich renderables of a Report: header, tokens, continuation, per-layer head statistics."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from attnscope.inspector.report import Report
from attnscope.render.checks import checks_view
from attnscope.render.heatmap import label

MAX_TOKENS_SHOWN = 96  # longer prompts show their first and last tokens

STATS = (
    ("entropy", "entropy", "mean attention entropy (nats)"),
    ("max_weight", "max w", "mean of each row's largest weight"),
    ("first_token_mass", "sink", "mean weight on the first token"),
)
# a model with attention sinks (gpt-oss): the softmax share of each head's learned sink logit
SINK_SHARE = ("sink_share", "s_aux", "mean share of the learned attention sink")


def header(report: Report) -> Text:
    m = report.model
    text = Text()
    text.append("attnscope ", style="bold magenta")
    text.append(f"{m['name']}", style="bold")
    text.append(
        f"  {m['model_type']} · {m['layers']} layers · {m['heads']} q / {m['kv_heads']} kv heads · "
        f"head_dim {m['head_dim']}\n"
    )
    auto = report.backend_choice.removeprefix("auto: ")
    chosen = "" if report.backend_choice == "given" else " (auto)"
    text.append(
        f"engine {m.get('engine', 'native')} · backend {report.backend}{chosen} · reference {report.reference} · "
        f"{report.device} · {report.dtype}",
        style="dim",
    )
    if chosen and not auto.startswith("the fastest"):  # a faster backend was ruled out: say why
        text.append(f"\nauto chose {report.backend}: {auto}", style="dim")
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
        n = len(report.continuation)
        text.append(f"\ncontinuation ({n} token{'' if n == 1 else 's'}, greedy)\n", style="bold")
        text.append("".join(tok.text for tok in report.continuation), style="green")
    return text


def captioned(table: Table, caption: str) -> Group:
    """A table with its caption under it, wrapped at the width of the console rather than of the table."""
    return Group(table, Text(caption, style="dim"))


def head_table(report: Report) -> Group:
    """One row per (layer, statistic), one column per query head; the heads in blocks as wide as the
    console (`HeadTable`), never a cut header."""
    with_roles = any(h.role_scores is not None for layer in report.layers for h in layer.heads)
    with_sinks = any(h.sink_share is not None for layer in report.layers for h in layer.heads)
    caption = "entropy: nats (uniform over T keys = ln T) · max w: row max · sink: weight on token 0"
    caption += " · s_aux: the learned sink's share of the softmax" * with_sinks
    caption += " · role: measured on a repeated random sequence, whatever the prompt (attnscope heads)" * with_roles
    return Group(HeadTable(report, with_roles, with_sinks), Text(caption, style="dim"))


class HeadTable:
    """The per-head statistics as tables of as many heads as the width holds: every head's column
    at its full width, the next heads in the next block ("heads 8–15")."""

    TITLE = "attention per head (mean over query rows)"
    GAP = 2  # between columns (a table's padding of one on each side)

    def __init__(self, report: Report, with_roles: bool, with_sinks: bool):
        self.report, self.with_roles = report, with_roles
        self.stats = STATS + (SINK_SHARE,) * with_sinks

    @property
    def cell_width(self) -> int:
        """The width of every head's column (the same in every block, so that blocks align)."""
        heads = self.report.layers[0].heads if self.report.layers else []
        return max([len(f"h{n}·kv{h.kv_head}") for n, h in enumerate(heads)] + [len("induct"), len("0.00")])

    def heads_per_block(self, width: int) -> int:
        """How many head columns fit `width` beside the layer and stat columns."""
        stat = max(len(short) for _, short, _ in (*self.stats, ("", "role", "")))
        return max(1, (width - len("layer") - self.GAP - stat) // (self.cell_width + self.GAP))

    def block(self, heads: range) -> Table:
        layers = self.report.layers
        table = Table(pad_edge=False, box=None, header_style="bold")
        table.add_column("layer", justify="right", no_wrap=True)
        table.add_column("stat", no_wrap=True)
        for h in heads:
            name = f"h{h}·kv{layers[0].heads[h].kv_head}"
            table.add_column(name, justify="right", no_wrap=True, min_width=self.cell_width)
        for layer in layers:
            shown = [layer.heads[h] for h in heads]
            for n, (key, short, _) in enumerate(self.stats):
                values = [getattr(h, key) for h in shown]
                cells = [number_text(v, ".2f") if v is not None else Text("–", style="dim") for v in values]
                last = n == len(self.stats) - 1 and not self.with_roles
                table.add_row(str(layer.index) if n == 0 else "", short, *cells, end_section=last)
            if self.with_roles:
                roles = [Text(role_short(h), style=ROLE_STYLE.get(h.role, "dim")) for h in shown]
                table.add_row("", "role", *roles, end_section=True)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        n_heads = len(self.report.layers[0].heads) if self.report.layers else 0
        per_block = self.heads_per_block(options.max_width)
        for start in range(0, n_heads, per_block):
            heads = range(start, min(n_heads, start + per_block))
            if per_block >= n_heads:
                yield Text(self.TITLE, style="table.title")
            else:
                yield Text(f"{self.TITLE} · heads {heads[0]}–{heads[-1]} of {n_heads}", style="table.title")
            yield self.block(heads)
            if start + per_block < n_heads:
                yield Text()


ROLE_SHORT = {"induction": "induct", "previous_token": "prev", "sink": "sink", "local": "local", "broad": "broad"}


def role_short(head) -> str:
    """A head's role in a few letters: "·" for none, "n/a" where the probe could not score one."""
    return ROLE_SHORT.get(head.role, "n/a" if head.role_reason else "·")


ROLE_STYLE = {
    "induction": "bold magenta",
    "previous_token": "bold cyan",
    "sink": "yellow",
    "local": "green",
    "broad": "dim",
}


def roles_table(report: Report, on_prompt: bool = False) -> Group:
    """One row per head: its role scores on the probe and its role (attnscope heads); with
    `on_prompt`, the scores on the report's prompt too (where it has enough rows to score)."""
    table = Table(title="head roles", title_justify="left", box=None, header_style="bold", pad_edge=False)
    prompt_keys = ("previous_token", "sink", "local", "broad")
    with_prompt = on_prompt and any(h.prompt_scores for layer in report.layers for h in layer.heads)
    names = ["layer", "head", "kv", "induct", "prev", "sink", "local", "broad", "role"]
    for name in names + ["prompt: prev", "sink", "local", "broad"] * with_prompt:
        table.add_column(name, justify="left" if name == "role" else "right")
    reasons = []
    for layer in report.layers:
        for h in layer.heads:
            if h.role_reason and h.role_reason not in reasons:
                reasons.append(h.role_reason)
            s, p = h.role_scores or {}, h.prompt_scores or {}
            table.add_row(
                str(layer.index),
                str(h.head),
                str(h.kv_head),
                *[score_text(s.get(k)) for k in ("induction", *prompt_keys)],
                Text(h.role or ("n/a" if h.role_reason else "–"), style=ROLE_STYLE.get(h.role, "dim")),
                *[score_text(p.get(k)) for k in prompt_keys] * with_prompt,
                end_section=h.head == len(layer.heads) - 1,
            )
    caption = (
        "scores in [0, 1], means over the rows with at least 16 keys; a role is named when its score passes "
        "the threshold (induction 0.4, prev 0.5, sink 0.6, local 0.8, broad 0.9)"
    )
    caption += "".join(f"\nn/a: no role, {reason}" for reason in reasons)
    return captioned(table, caption)


def score_text(value) -> Text:
    """A role score as text; a dim dash where it could not be measured (too few rows)."""
    return Text("–", style="dim") if value is None else Text(number_text(value, ".2f"))


def number_text(value, fmt: str) -> str:
    """A statistic of the report as text: a float formatted, a non-finite one ("nan", "inf") as it is."""
    return format(value, fmt) if isinstance(value, float) else str(value)


def over_heads(values, fold) -> float:
    """`fold` (min, max or a mean) of one statistic over a layer's heads: NaN when any head's is NaN,
    as numpy's would be (the report holds non-finite statistics as the strings "nan", "inf")."""
    numbers = [float(v) for v in values]
    return float("nan") if any(v != v for v in numbers) else fold(numbers)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def layer_table(report: Report) -> Group:
    """One row per layer: its mask, head statistics over the heads (NaN when a head's is), NaN count
    and the checks' largest differences, red where a check found a problem."""
    table = Table(title="layers", title_justify="left", box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("layer", "right"),
        ("mask", "left"),
        ("entropy", "right"),
        ("sink", "right"),
        ("max w", "right"),
        ("NaN", "right"),
        ("Δ inc", "right"),
        ("Δ ref", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")
    for layer in report.layers:
        heads = layer.heads
        flagged = {f for h in heads for f in h.flags}

        def delta(key, check, heads=heads, flagged=flagged):
            values = [getattr(h, key) for h in heads if getattr(h, key) is not None]
            if not values:
                return Text("–", style="dim")
            worst = max(values, key=lambda v: float("inf") if isinstance(v, str) else v)
            return Text(number_text(worst, ".1e"), style="bold red" if check in flagged else "")

        def stat(text: str) -> Text:
            return Text(text, style="bold red" if "nan" in text or "inf" in text else "")

        entropy = [h.entropy for h in heads]
        low, high = over_heads(entropy, min), over_heads(entropy, max)
        nan = sum(h.nonfinite for h in heads)
        table.add_row(
            str(layer.index),
            layer.mask,
            stat(f"{low:.2f}–{high:.2f}" if low == low else "nan"),
            stat(f"{over_heads([h.first_token_mass for h in heads], max):.2f}"),
            stat(f"{over_heads([h.max_weight for h in heads], _mean):.2f}"),
            Text(str(nan), style="bold red" if nan else ""),
            delta("full_vs_incremental", "full_vs_incremental"),
            delta("backend_vs_reference", "backend_vs_reference"),
        )
    return captioned(
        table,
        "entropy min–max over heads (nats) · sink: largest mean weight on token 0 · "
        "Δ inc: full vs incremental · Δ ref: backend vs eager",
    )


def run_report(report: Report) -> Group:
    """Header, tokens and continuation, the layer table, the per-head table and the checks."""
    parts = [header(report), Text(), tokens(report), Text(), layer_table(report), Text(), head_table(report)]
    if report.checks:
        parts += [Text(), checks_view(report.checks)]
    return Group(*parts)


MODEL_GROUPS = {"": "trained", "broken": "broken: tiny-code with one planted fault each, for trying the checks"}


def models_table() -> Group:
    """The bundled sample models, a table per group (the trained ones, then each folder of variants):
    name (the default marked), size on disk, the card's first line."""
    from attnscope.samples import DEFAULT_MODEL, model_card_summary, sample_models

    groups: dict[str, list[tuple[str, object]]] = {}
    for name, path in sample_models().items():
        shown = f"{name} (default)" if name == DEFAULT_MODEL else name
        groups.setdefault(name.rpartition("/")[0], []).append((shown, path))
    width = max((len(shown) for members in groups.values() for shown, _ in members), default=0)  # aligned
    parts = []
    for group, members in groups.items():
        table = Table(
            title=MODEL_GROUPS.get(group, group),
            title_justify="left",
            title_style="bold",
            box=None,
            header_style="bold",
            pad_edge=False,
            show_header=not parts,
        )
        table.add_column("name", min_width=width, no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("description")
        for shown, path in members:
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            table.add_row(shown, f"{size / 1e6:.1f} MB", model_card_summary(path))
        parts += [Text()] * bool(parts) + [table]
    return Group(*parts)
