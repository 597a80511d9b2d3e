"""The interactive HTML report: one self-contained file (scripts, styles and data inline, nothing
fetched) of a `Result` or a `Comparison`, for a browser (``--html``) or a notebook (``_repr_html_``).

What the page holds, per run (a "view"; `attnscope check` writes one per prompt × backend):

- the header and the checks, failures first, each linking to the layer, head and position it names;
- a layer × head overview (kv groups side by side) colored by a chosen statistic: entropy, focus,
  role, status, and the largest |Δ| of each comparing check (✗ over its tolerance);
- every head's map, pooled to at most `OVERVIEW` × `OVERVIEW` cells (the max over each cell's region,
  computed band by band from q, k and lse by ``attention_pooled``: the full matrix is never built), or
  the whole matrix when it fits; stored as one byte a cell on a log scale (`LOG_FLOOR` … 1, 251
  steps, 5.7 % apart), masked and NaN/Inf cells as their own codes;
- exact float32 cells of the regions the budget allows (`EXACT_CELLS` per view): first the heads
  named by failing checks (a window of `WINDOW` × `WINDOW` ending at the position they name), then
  the default head (the most focused one; for a comparison the one that moved most), then every head
  in order, each whole when its matrix fits the window, while the budget lasts; hovering a cell of
  an exact region shows the probability that ``Result.attention`` returns;
- per layer, the mask (pooled: all, some or no keys allowed) and its 64 × 64 tile map; per head
  and comparing check, |Δ| per query position (max-pooled to `STRIP` positions).

Binary data is zlib-compressed and base64-encoded in ``<script type="application/octet-stream">``
elements, inflated in the browser by ``DecompressionStream`` (plain JavaScript, no framework).
This module reads a `Result` / `Comparison` through their views only, and imports nothing of rich.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from attnscope.pooling import pool2d, pool_edges

OVERVIEW = 128  # largest side of a head's stored map (cells)
WINDOW = 256  # largest side of one exact region
EXACT_CELLS = 1 << 18  # exact float32 cells per view (1 MiB before compression)
STRIP = 256  # positions of a per-position |Δ| strip
LOG_FLOOR = 1e-6  # smallest weight told apart from zero in the byte encoding
CODE_ZERO, CODE_NONFINITE, CODE_MASKED = 0, 253, 255
LOG_CODES = 251  # codes 1..252 cover log10(LOG_FLOOR)..0
TILE = 64  # tile size of the tile map
ROLE_SHORT = {"induction": "ind", "previous_token": "prev", "sink": "sink", "local": "loc", "broad": "brd"}


def encode_log(weights: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] as uint8 codes: 0 under `LOG_FLOOR`, 1..252 log-spaced up to 1, 253 NaN/Inf,
    255 masked (no allowed key in the cell)."""
    w = np.asarray(weights, dtype=np.float64)
    finite = np.isfinite(w)
    level = (np.log10(np.clip(np.where(finite, w, 1.0), LOG_FLOOR, 1.0)) - np.log10(LOG_FLOOR)) / -np.log10(LOG_FLOOR)
    codes = (1 + np.round(level * LOG_CODES)).astype(np.uint8)
    codes[finite & (w < LOG_FLOOR)] = CODE_ZERO
    codes[~finite] = CODE_NONFINITE
    codes[~np.asarray(allowed, dtype=bool)] = CODE_MASKED
    return codes


def decode_log(codes: np.ndarray) -> np.ndarray:
    """The weights that `encode_log` codes stand for (masked: -1, NaN/Inf: NaN), as the page decodes them."""
    c = np.asarray(codes, dtype=np.float64)
    w = 10.0 ** (np.log10(LOG_FLOOR) * (1 - (c - 1) / LOG_CODES))
    w[c == CODE_ZERO] = 0.0
    w[c == CODE_NONFINITE] = np.nan
    w[c == CODE_MASKED] = -1.0
    return w


class Blobs:
    """Binary arrays of a page, each stored zlib-compressed and base64-encoded under a name."""

    def __init__(self) -> None:
        self.parts: dict[str, str] = {}

    def add(self, name: str, chunks: list[bytes]) -> str:
        self.parts[name] = base64.b64encode(zlib.compress(b"".join(chunks), 6)).decode("ascii")
        return name


@dataclass
class Region:
    layer: int
    head: int
    q0: int
    q1: int
    k0: int
    k1: int

    @property
    def cells(self) -> int:
        return (self.q1 - self.q0) * (self.k1 - self.k0)


@dataclass
class Place:
    """A (layer, head) the page should show exactly, at query row `row` (None: the last)."""

    layer: int
    head: int
    row: int | None = None


@dataclass
class ViewParts:
    """What a view holds beyond what every view has (header, checks, statistics)."""

    header: list[tuple[str, str]]
    checks: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    roles: list[list[str | None]] | None
    default: tuple[int, int]
    places: list[Place]
    measure: str
    strips: list[tuple[str, str, list]] = field(default_factory=list)  # (name, title, per-layer Diff)


def window(Sq: int, Sk: int, layer: int, head: int, row: int | None) -> Region:
    """The exact region of one head: the whole matrix when it fits `WINDOW`², else the `WINDOW`²
    square on the diagonal that ends at query row `row` (the last row when None)."""
    if Sq * Sk <= WINDOW * WINDOW:
        return Region(layer, head, 0, Sq, 0, Sk)
    past = Sk - Sq
    row = Sq - 1 if row is None else min(max(row, 0), Sq - 1)
    q1 = max(row + 1, min(Sq, WINDOW))
    q0 = max(0, q1 - WINDOW)
    k1 = min(Sk, past + q1)
    k0 = max(0, k1 - WINDOW)
    return Region(layer, head, q0, q1, k0, k1)


def exact_regions(shapes: list[tuple[int, int]], n_heads: int, places: list[Place], budget: int) -> list[Region]:
    """The regions stored exactly: `places` first, then every head in order, while `budget` cells last."""
    chosen: list[Region] = []
    seen: set[tuple[int, int]] = set()
    every = [Place(layer, head) for layer in range(len(shapes)) for head in range(n_heads)]
    for place in [*places, *every]:
        if (place.layer, place.head) in seen or not 0 <= place.layer < len(shapes):
            continue
        region = window(*shapes[place.layer], place.layer, place.head, place.row)
        if region.cells > budget:
            if place in places:
                continue
            break
        seen.add((place.layer, place.head))
        chosen.append(region)
        budget -= region.cells
    return chosen


def _number(x: Any) -> float | None:
    """A statistic as JSON holds it (a float, or "nan"/"inf" strings) as a float, None for NaN/Inf."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _tile_states(mask, Sq: int, Sk: int) -> np.ndarray:
    try:
        return mask.blocks(Sq, Sk, TILE, TILE).states[0, 0].cpu().numpy().astype(np.uint8)
    except Exception:  # a mask the tile scan refuses (an unusual custom one): no tile map
        return np.zeros((0, 0), dtype=np.uint8)


def build_view(maps, name: str, parts: ViewParts, blobs: Blobs, key: str, batch: int = 0) -> dict[str, Any]:
    """One view's data: `maps` is what the heatmaps read (`attnscope.render.heatmap.HeadMaps`: a
    `Result` or a `Comparison`); the blobs of its maps are added to `blobs` under `key`."""
    records = maps.records
    n_heads = maps.n_heads
    tokens = maps.row_tokens(batch)
    layers: list[dict[str, Any]] = []
    codes: list[bytes] = []
    masks: list[tuple[np.ndarray, np.ndarray]] = []
    mask_index: dict[tuple, int] = {}
    for layer, rec in enumerate(records):
        Sq, Sk = rec.shape
        rows, cols = pool_edges(Sq, OVERVIEW), pool_edges(Sk, OVERVIEW)
        exact = len(rows) - 1 == Sq and len(cols) - 1 == Sk
        allowed_full = rec.allowed(0, batch).cpu().numpy()
        share, _, _ = pool2d(allowed_full.astype(np.float32), OVERVIEW, OVERVIEW, "mean")
        mask_codes = np.where(share >= 1, 2, np.where(share > 0, 1, 0)).astype(np.uint8)
        tile = _tile_states(rec.mask, Sq, Sk)
        signature = (mask_codes.tobytes(), tile.tobytes(), tile.shape)
        if signature not in mask_index:
            mask_index[signature] = len(masks)
            masks.append((mask_codes, tile))
        for head in range(n_heads):
            allowed = rec.allowed(head, batch).cpu().numpy()
            if exact:
                w = maps.attention(layer, head, batch=batch).cpu().numpy()
                a = allowed
            else:
                w = maps.attention_pooled(layer, head, OVERVIEW, OVERVIEW, "max", batch=batch)
                a, _, _ = pool2d(allowed, OVERVIEW, OVERVIEW, "any")
            codes.append(encode_log(w, a).tobytes())
        layers.append(
            {
                "Sq": Sq,
                "Sk": Sk,
                "past": Sk - Sq,
                "group": rec.group_size,
                "mask": repr(rec.mask),
                "rows": rows.tolist(),
                "cols": cols.tolist(),
                "exact": exact,
                "maskIndex": mask_index[signature],
            }
        )
    regions = exact_regions([rec.shape for rec in records], n_heads, parts.places, EXACT_CELLS)
    exact_chunks, exact_list, offset = [], [], 0
    for r in regions:
        w = maps.attention(r.layer, r.head, slice(r.q0, r.q1), slice(r.k0, r.k1), batch).cpu().numpy()
        a = records[r.layer].allowed(r.head, batch)[r.q0 : r.q1, r.k0 : r.k1].cpu().numpy()
        exact_chunks.append(np.where(a, w, -1.0).astype("<f4").tobytes())
        exact_list.append({"layer": r.layer, "head": r.head, "q0": r.q0, "q1": r.q1, "k0": r.k0, "k1": r.k1})
        exact_list[-1]["offset"] = offset
        offset += r.cells
    strips, strip_chunks = [], []
    for strip_name, title, diffs in parts.strips:
        n = records[0].shape[0]
        edges = pool_edges(n, STRIP)
        for d in diffs:
            rows = d.row_max[batch].float().cpu().numpy() if d.row_max is not None else np.zeros((n_heads, n))
            bad = d.bad_rows[batch].cpu().numpy()
            pooled = np.maximum.reduceat(np.where(np.isnan(rows), np.inf, rows), edges[:-1], axis=1)
            over = np.logical_or.reduceat(bad | ~np.isfinite(rows), edges[:-1], axis=1)
            signed = np.where(over, -np.maximum(pooled, 1e-30), pooled)
            signed[np.isinf(pooled)] = np.nan
            strip_chunks.append(signed.astype("<f4").tobytes())
        strips.append({"name": strip_name, "title": title, "edges": edges.tolist()})
    view = {
        "name": name,
        "measure": parts.measure,
        "header": parts.header,
        "checks": parts.checks,
        "metrics": parts.metrics,
        "roles": parts.roles,
        "tokens": tokens,
        "nHeads": n_heads,
        "layers": layers,
        "default": list(parts.default),
        "exact": exact_list,
        "strips": strips,
        "masks": [
            {"rows": m.shape[0], "cols": m.shape[1], "tileRows": t.shape[0], "tileCols": t.shape[1]} for m, t in masks
        ],
        "blobs": {
            "maps": blobs.add(f"{key}-maps", codes),
            "exact": blobs.add(f"{key}-exact", exact_chunks),
            "masks": blobs.add(f"{key}-masks", [m.tobytes() for m, _ in masks]),
            "tiles": blobs.add(f"{key}-tiles", [t.tobytes() for _, t in masks]),
            "strips": blobs.add(f"{key}-strips", strip_chunks),
        },
    }
    return view


def _checks(checks) -> list[dict[str, Any]]:
    """The checks as the page lists them: failures first."""
    found = [
        {
            "name": c.name,
            "passed": c.passed,
            "skipped": c.skipped,
            "message": c.message,
            "where": {k: v for k, v in (c.where or {}).items() if isinstance(v, (int, str, type(None)))},
        }
        for c in checks
    ]
    return sorted(found, key=lambda c: c["passed"])


def _failing_places(checks) -> list[Place]:
    return [
        Place(int(c.where["layer"]), int(c.where.get("head") or 0), c.where.get("position"))
        for c in checks
        if not c.passed and c.where and c.where.get("layer") is not None
    ]


def _diff_metric(name: str, title: str, diffs, tolerance: float) -> dict[str, Any]:
    values = np.stack([d.max_abs.float().cpu().numpy() for d in diffs])
    over = np.stack([d.bad_rows[0].any(-1).cpu().numpy() for d in diffs])
    return {
        "name": name,
        "label": title,
        "kind": "diff",
        "tolerance": tolerance,
        "values": [[_number(x) for x in row] for row in values.tolist()],
        "nonfinite": (~np.isfinite(values)).tolist(),
        "over": over.tolist(),
    }


def run_parts(result, report, layer: int | None = None, head: int | None = None) -> ViewParts:
    """What the page shows of a `Result` besides its maps: `report` is ``result.report()``."""
    from attnscope.inspector.report import pick_head

    default_layer, default_head, _ = pick_head(report, layer, head)
    header = [
        ("model", str(report.model.get("name", ""))),
        (
            "backend",
            f"{report.backend} ({report.backend_choice})" if report.backend_choice != "given" else report.backend,
        ),
        ("device · dtype", f"{report.device} · {report.dtype}"),
        ("prompt", report.prompt if isinstance(report.prompt, str) else " ".join(map(str, report.prompt))),
        ("tokens", str(len(report.tokens))),
        ("continuation", "".join(t.text for t in report.continuation)),
        ("checks", "passed" if report.passed else "FAILED"),
    ]
    stats = [lr.heads for lr in report.layers]
    metrics: list[dict[str, Any]] = []
    for key, label in (
        ("entropy", "entropy (nats)"),
        ("focus", "focus"),
        ("max_weight", "max weight"),
        ("first_token_mass", "first-token mass"),
    ):
        metrics.append(
            {
                "name": key,
                "label": label,
                "kind": "linear",
                "values": [[_number(getattr(h, key)) for h in heads] for heads in stats],
            }
        )
    status = [["nan" if h.nonfinite else "flag" if h.flags else "ok" for h in heads] for heads in stats]
    metrics.append({"name": "status", "label": "status", "kind": "status", "values": status})
    roles = [[h.role for h in heads] for heads in stats]
    if any(r for row in roles for r in row):
        metrics.append({"name": "role", "label": "role", "kind": "role", "values": roles})
    strips = []
    for name, title in (
        ("full_vs_incremental", "full vs incremental (KV cache)"),
        ("backend_vs_reference", f"{report.backend} vs eager float32"),
    ):
        diffs = result.diffs.get(name)
        check = report.check(name)
        if not diffs or check is None or "tolerance" not in check.figures:
            continue
        metrics.append(_diff_metric(name, f"{title}: max |Δ|", diffs, float(check.figures["tolerance"]["atol"])))
        strips.append((name, title, diffs))
    places = [*_failing_places(report.checks), Place(default_layer, default_head)]
    return ViewParts(header, _checks(report.checks), metrics, roles, (default_layer, default_head), places, "P", strips)


def comparison_parts(comparison) -> ViewParts:
    """What the page shows of a `Comparison` besides its |ΔP| maps."""
    a, b = comparison.run_a.model, comparison.run_b.model
    checks = comparison.checks()
    header = [
        ("model A (reference)", f"{a.name} · {_dtype(a)}"),
        ("model B", f"{b.name} · {_dtype(b)}"),
        ("backend", comparison.backend),
        ("prompt", comparison.prompt if isinstance(comparison.prompt, str) else " ".join(map(str, comparison.prompt))),
        ("tokens", str(len(comparison.ids))),
        ("identical", "yes, bit for bit" if comparison.identical else "no"),
        ("top-1 agreement", f"{comparison.top1_agreement:.1%}"),
        ("checks", "passed" if comparison.passed else "FAILED"),
    ]
    tol = comparison.tolerance.atol
    metrics = [
        {
            "name": key,
            "label": label,
            "kind": "range",
            "tolerance": tol if key != "js_mean" else None,
            "values": [[_number(x) for x in row] for row in values.tolist()],
            "over": comparison.heads_over.tolist(),
        }
        for key, label, values in (
            ("js_mean", "mean Jensen–Shannon divergence", comparison.js_mean),
            ("probability_max", "max |ΔP|", comparison.probability_max),
            ("output_max", "attention output max |Δ|", comparison.output_max),
        )
    ]
    worst = comparison.worst_head()
    places = [*_failing_places(checks), Place(*worst)]
    strips = [("output", "attention output |Δ| vs A", comparison.output)]
    return ViewParts(header, _checks(checks), metrics, None, worst, places, "|ΔP|", strips)


def _dtype(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def page(views: list[dict[str, Any]], blobs: Blobs, title: str) -> str:
    """The whole HTML document."""
    assets = resources.files("attnscope.htmlview")
    script = assets.joinpath("report.js").read_text(encoding="utf-8")
    style = assets.joinpath("report.css").read_text(encoding="utf-8")
    data = json.dumps({"title": title, "views": views}, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    blob_tags = "\n".join(
        f'<script type="application/octet-stream" id="blob-{name}">{text}</script>'
        for name, text in blobs.parts.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title>'
        f'<style>{style}</style></head>\n<body>\n<div id="app"><p class="loading">loading…</p></div>\n'
        f'<script type="application/json" id="attnscope-data">{_script_safe(data)}</script>\n{blob_tags}\n'
        f"<script>{script}</script>\n</body></html>\n"
    )


def _script_safe(text: str) -> str:
    """JSON that cannot close its <script> element early."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def result_page(result, title: str = "", layer: int | None = None, head: int | None = None) -> str:
    """The HTML report of a `Result` (row 0 of a batch); `layer` / `head` choose the head shown first."""
    return runs_page([(result.report().model.get("name", "run"), result)], title, layer, head)


def runs_page(runs: list[tuple[str, Any]], title: str = "", layer: int | None = None, head: int | None = None) -> str:
    """One page of several runs, given as (name, `Result`): a view each."""
    blobs = Blobs()
    views = []
    for n, (name, result) in enumerate(runs):
        report = result.report()
        views.append(build_view(result, name, run_parts(result, report, layer, head), blobs, f"v{n}"))
    return page(views, blobs, title or f"attnscope · {runs[0][0]}")


def comparisons_page(comparisons: list[tuple[str, Any]], title: str = "") -> str:
    """One page of several comparisons, given as (name, `Comparison`): a view of |ΔP| each."""
    blobs = Blobs()
    views = [build_view(c, name, comparison_parts(c), blobs, f"v{n}") for n, (name, c) in enumerate(comparisons)]
    return page(views, blobs, title or "attnscope compare")


def notebook_frame(document: str, height: int = 900) -> str:
    """`document` in an iframe (``srcdoc``), as a notebook cell shows it: its scripts and styles kept
    apart from the notebook's and from other cells' reports."""
    return (
        f'<iframe srcdoc="{html.escape(document, quote=True)}" style="width:100%;height:{height}px;border:0" '
        'title="attnscope report"></iframe>'
    )
