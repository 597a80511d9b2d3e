"""Findings of the checks as lines that read at any width: `attnscope check` and `run`, and the TUI's
Checks tab.

A check is one line: ✓/✗, its name, its worst figure and where it is worst; its finding goes beside
them when it fits, else on its own line(s) below. Where it is worst wraps at its " · " parts, never
inside one ("position 12" stays whole). The columns are as wide as their widest content over every
check shown together, so the rows line up; several runs (prompt × backend) are grouped under a
heading line each.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.text import Text

from attnscope.inspector.report import Check

GAP = 2  # spaces between columns
BELOW = 4  # indent of what goes on its own line under a check
MIN_PROSE = 48  # a finding wraps beside the columns only in at least this many columns, else it goes below


def worst_figure(check: Check) -> str:
    """The check's worst figure: its largest difference, or its count of non-finite values."""
    f = check.figures
    for key in ("max_abs_diff", "max_weight_sum_error"):
        if key in f:
            value = f[key]
            return f"max |Δ| {value:.2e}" if isinstance(value, float) else f"max |Δ| {value}"
    if "nonfinite_counts" in f:
        return f"{sum(f['nonfinite_counts'].values())} non-finite"
    return ""


def where_parts(check: Check) -> list[str]:
    """Where the check is worst, one part per coordinate: ["layer 2", "head 4", "position 0", "stage scores"];
    a kv head after the head where one is named (the nan check's k or v: ["layer 2", "head 4", "kv head 1",
    "position 0", "stage k"])."""
    w = check.where or {}
    names = {"kv_head": "kv head"}
    keys = ("layer", "head", "kv_head", "position", "stage")
    return [f"{names.get(k, k)} {w[k]}" for k in keys if w.get(k) is not None]


def where_text(check: Check) -> str:
    return " · ".join(where_parts(check))


def mark(check: Check) -> Text:
    if check.skipped is not None:
        return Text("-", style="dim")
    return Text("✓", style="green") if check.passed else Text("✗", style="bold red")


@dataclass(frozen=True)
class Columns:
    """Widths of the name, worst-figure and where columns (where: its whole one-line text)."""

    name: int
    worst: int
    where: int

    @classmethod
    def of(cls, checks: list[Check]) -> Columns:
        return cls(
            max((len(c.name) for c in checks), default=0),
            max((len(worst_figure(c)) for c in checks), default=0),
            max((len(where_text(c)) for c in checks), default=0),
        )


def pack_parts(parts: list[str], width: int, sep: str = " · ", lead: str = "· ") -> list[str]:
    """Parts joined by `sep` into lines of at most `width`, a line never breaking inside a part (one
    longer than `width` has a line of its own); a continued line starts with `lead`."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part if not lines else lead + part)
    return lines


def _wrap(text: Text, console: Console, width: int) -> list[Text]:
    lines = list(text.wrap(console, width))
    for line in lines:
        line.rstrip()
    return lines


class CheckRow:
    """One check in the columns `columns` (of every check shown with it), `indent` spaces in."""

    def __init__(self, check: Check, columns: Columns | None = None, indent: int = 0):
        self.check = check
        self.columns = columns or Columns.of([check])
        self.indent = indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        check, cols, width = self.check, self.columns, options.max_width
        line = Text(" " * self.indent)
        line.append_text(mark(check))
        line.append(f" {check.name:<{cols.name}}")
        if cols.worst:
            line.append(" " * GAP + f"{worst_figure(check):>{cols.worst}}")
        start = line.cell_len + GAP  # where the where column starts
        parts = where_parts(check)
        longest = max((len(p) + 2 for p in parts), default=0)  # "· " before a continued part
        beside = cols.where and width - start >= max(longest, 1)  # the where column fits beside
        where_w = min(cols.where, width - start) if beside else 0
        where_lines = pack_parts(parts, where_w) if beside else []
        below: list[Text] = []
        if parts and not beside:
            below += [
                Text(" " * (self.indent + BELOW) + text, style="dim")
                for text in pack_parts(parts, max(1, width - self.indent - BELOW))
            ]
        finding_at = start + (where_w + GAP if where_w else 0)
        room = width - finding_at
        message = Text(check.message, style="" if check.passed else "red")
        finding_beside = (
            bool(check.message) and len(where_lines) <= 1 and (len(check.message) <= room or room >= MIN_PROSE)
        )
        if where_w:
            line.append(" " * GAP + f"{where_lines[0] if where_lines else '':<{where_w}}", style="dim")
        wrapped = _wrap(message, console, room) if finding_beside else []
        if wrapped:
            line.append(" " * GAP)
            line.append_text(wrapped[0])
        line.rstrip()
        yield line
        yield from (Text(" " * finding_at) + rest for rest in wrapped[1:])
        yield from (Text(" " * start + more, style="dim") for more in where_lines[1:])
        yield from below
        if check.message and not finding_beside:
            indent = self.indent + BELOW
            yield from (Text(" " * indent) + text for text in _wrap(message, console, max(1, width - indent)))


def run_heading(index: int, backend: str, prompt: str, checks: list[Check], width: int) -> Text:
    """The heading of one prompt × backend run: prompt index, backend, the prompt (cut to the width)
    and its tally."""
    failed = sum(not c.passed for c in checks)
    skipped = sum(c.skipped is not None for c in checks)
    tally = f"✗ {failed} of {len(checks)} failed" if failed else f"✓ {len(checks) - skipped} passed"
    if skipped:
        tally += f", {skipped} skipped"
    head = f"prompt {index} · {backend} · "
    room = max(8, width - len(head) - len(tally) - 2 - 2)  # 2 quotes, 2 spaces
    text = prompt.replace("\n", "⏎").replace("\t", "⇥")
    text = text if len(text) <= room else text[: room - 1] + "…"
    heading = Text(head, style="bold")
    heading.append(f"'{text}'", style="cyan")
    heading.append(f"  {tally}", style="bold red" if failed else "green")
    return heading


class ChecksView:
    """Several runs' checks, a heading line per run (when there are several), then one row per check.

    Args:
        runs: (prompt index, backend, prompt text, checks) of each run, in order.
        title: the first line (none when empty).
    """

    def __init__(self, runs: list[tuple[int, str, str, list[Check]]], title: str = ""):
        self.runs, self.title = runs, title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = Columns.of([c for *_, checks in self.runs for c in checks])
        grouped = len(self.runs) > 1
        parts: list = [Text(self.title, style="bold")] if self.title else []
        for n, (index, backend, prompt, checks) in enumerate(self.runs):
            if grouped:
                parts += [Text()] if n or self.title else []
                parts.append(run_heading(index, backend, prompt, checks, options.max_width))
            parts += [CheckRow(c, columns, indent=2 if grouped else 0) for c in checks]
        yield Group(*parts)


def checks_view(checks: list[Check], title: str = "checks") -> ChecksView:
    """The checks of one run, under `title`."""
    return ChecksView([(0, "", "", checks)], title)
