"""The Report: plain dataclasses, JSON-serializable, versioned (``attnscope.report/1``).

The report is the single source that the CLI, the TUI and CI read. Top-level keys: ``schema,
model, backend, reference, lse_source, device, dtype, prompt, tokens, continuation, masks, layers,
checks, passed, mask_cache``. `head_stats` and `build_report` make it from a `Run` and what the checks found.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from attnscope.errors import ArgumentError

if TYPE_CHECKING:  # the report itself is plain data: reading or rendering one needs no torch
    from attnscope.inspector.run import Run

SCHEMA = "attnscope.report/1"


@dataclass
class Token:
    index: int  # absolute position
    id: int
    text: str


@dataclass
class HeadStats:
    head: int  # query head index
    kv_head: int  # the kv head it reads (GQA)
    # numbers as JSON holds them (`json_number`): a float, or "nan" / "inf" / "-inf"
    entropy: float | str  # mean over query rows, in nats
    max_weight: float | str  # mean over query rows of the row's largest weight
    first_token_mass: float | str  # mean over query rows of the weight on position 0 (attention sink)
    focus: float | str  # mean over query rows of the largest weight on a key but position 0, the query, the previous
    nonfinite: int = 0  # NaN/Inf values in this head's scores, weights and output
    fully_masked_rows: int = 0  # query rows of real tokens with no allowed key
    full_vs_incremental: float | str | None = None  # max |Δ| of the attention output (None: not checked)
    backend_vs_reference: float | str | None = None  # max |Δ| against eager float32 (None: not checked)
    flags: list[str] = field(default_factory=list)  # checks that found a problem in this head
    role: str | None = None  # induction, previous_token, sink, local, broad, on the probe (None: no clear role)
    role_scores: dict[str, float | str] | None = None  # on the probe; None when roles were not scored
    role_reason: str | None = None  # why the probe could not score a role (too few rows); None when it could
    prompt_scores: dict[str, float | str] | None = None  # prev, sink, local, broad on the prompt; None: too short
    sink_share: float | str | None = None  # mean over rows of the learned sink's share (gpt-oss); None: no sinks


@dataclass
class LayerReport:
    index: int
    mask: str  # readable mask spec, e.g. "causal & sliding_window(4096)"
    heads: list[HeadStats]


@dataclass
class Check:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)  # max_abs_diff, tolerance, ...
    where: dict[str, Any] | None = None  # layer, head, position, stage of the worst place
    message: str = ""

    @property
    def skipped(self) -> str | None:
        """Why the check did not run (it passes), or None when it ran."""
        return self.figures.get("skipped")


@dataclass
class Report:
    model: dict[str, Any]
    backend: str
    reference: str
    device: str
    dtype: str
    prompt: str | list[int]
    tokens: list[Token]
    continuation: list[Token]
    masks: list[str]
    layers: list[LayerReport]
    checks: list[Check] = field(default_factory=list)
    mask_cache: dict[str, int] = field(default_factory=dict)  # hits / misses of the dense-mask cache
    lse_source: str = ""  # what computed the lse of the records: a kernel's name, or "eager" (recomputed)
    backend_choice: str = "given"  # "given" (by name), or "auto: ..." with why that backend
    # --intervene: each `attnscope.inspector.interventions.Effect`'s dict (the key only when there are any)
    interventions: list[dict[str, Any]] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        order = [
            "schema",
            "model",
            "backend",
            "backend_choice",
            "reference",
            "lse_source",
            "device",
            "dtype",
            "prompt",
            "tokens",
            "continuation",
            "masks",
            "layers",
            "checks",
            "passed",
            "mask_cache",
            *(["interventions"] if self.interventions else []),
        ]
        return {key: d[key] for key in order}

    def check(self, name: str) -> Check | None:
        """The check called `name`, or None when it did not run."""
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent, allow_nan=False)


def head_stats(run: Run, diffs: dict, roles=None, batch: int = 0) -> list[list[HeadStats]]:
    """Per layer, per query head: means over the real query rows of entropy, max weight,
    first-token mass and (for a model with attention sinks) the learned sink's share; non-finite
    and fully-masked counts; the checks' largest differences (`diffs`: check name -> per-layer
    `Diff`); the role when `roles` were scored."""
    real = run.inputs.real[batch]  # (T,)
    n = max(1, int(real.sum()))
    out = []
    for layer, rec in enumerate(run.records):
        s = rec.stats

        def mean(t, real=real):
            return t[batch].masked_fill(~real, 0).sum(-1).div(n).tolist()  # (Hq,)

        entropy, max_w, sink, focus = mean(s.entropy), mean(s.max_weight), mean(s.first_token_mass), mean(s.focus)
        shares = None if rec.sinks is None else mean(s.sink_weight)
        bad = (s.nonfinite_scores + s.nonfinite_weights + s.nonfinite_output)[batch].sum(-1).tolist()
        empty = (s.fully_masked[batch] & real).sum(-1).tolist()
        worst = {name: d[layer].max_abs.tolist() for name, d in diffs.items()}
        over = {name: d[layer].bad_rows[batch].any(-1).tolist() for name, d in diffs.items()}

        def flags(h, bad=bad, empty=empty, over=over):
            found = ["nan"] if bad[h] else []
            found += ["masked_rows"] if empty[h] else []
            return found + [name for name, o in over.items() if o[h]]

        def worst_of(h, worst=worst) -> dict[str, Any]:  # full_vs_incremental=..., backend_vs_reference=...
            return {name: json_number(d[h]) for name, d in worst.items()}

        def role(h, layer=layer) -> dict[str, Any]:
            if roles is None:
                return {}
            r = roles[layer][h]
            return {
                "role": r.role,
                "role_scores": rounded(r.scores),
                "role_reason": r.reason,
                "prompt_scores": None if r.prompt_scores is None else rounded(r.prompt_scores),
            }

        out.append(
            [
                HeadStats(
                    head=h,
                    kv_head=h // rec.group_size,
                    entropy=json_number(entropy[h]),
                    max_weight=json_number(max_w[h]),
                    first_token_mass=json_number(sink[h]),
                    focus=json_number(focus[h]),
                    nonfinite=int(bad[h]),
                    fully_masked_rows=int(empty[h]),
                    **worst_of(h),
                    flags=flags(h),
                    **role(h),
                    sink_share=None if shares is None else json_number(shares[h]),
                )
                for h in range(rec.q.shape[1])
            ]
        )
    return out


def rounded(scores: dict[str, float]) -> dict[str, float | str]:
    return {k: json_number(round(v, 4)) for k, v in scores.items()}


def model_info(model) -> dict[str, Any]:
    """The report's ``model`` entry of an engine: name, path, engine, model type and layout."""
    layout = model.layout
    return {
        "name": model.name,
        "path": str(model.path),
        "engine": model.engine,
        "model_type": layout.model_type,
        "layers": layout.n_layers,
        "heads": layout.n_heads,
        "kv_heads": layout.n_kv_heads,
        "head_dim": layout.head_dim,
        "vocab_size": layout.vocab_size,
    }


def tokens_of(run: Run, ids: list[int], start: int = 0) -> list[Token]:
    """`Token`s of token ids (their text from the run's tokenizer), indexed from `start`."""
    return [Token(start + i, t, s) for i, (t, s) in enumerate(zip(ids, run.token_texts(ids), strict=True))]


def build_report(
    run: Run, prompt, continuation: list[int], checks: list[Check], diffs: dict, roles=None, batch: int = 0
) -> Report:
    """The `Report` of row `batch` of a run: `prompt` as given (text or ids), the greedy
    `continuation` ids, the `checks` that ran and their `diffs`, the head `roles` if scored."""
    from attnscope import masks  # (torch) only to build a report, not to read or render one

    model = run.model
    ids = run.inputs.ids[batch].tolist()
    tokens, new = tokens_of(run, ids), tokens_of(run, continuation, len(ids))
    layers = [
        LayerReport(rec.layer, repr(rec.mask), heads)
        for rec, heads in zip(run.records, head_stats(run, diffs, roles, batch), strict=True)
    ]
    return Report(
        model=model_info(model),
        backend=run.backend,
        reference="eager",
        device=str(model.device),
        dtype=str(model.dtype).removeprefix("torch."),
        prompt=prompt if isinstance(prompt, str) else [int(i) for i in prompt],
        tokens=tokens,
        continuation=new,
        masks=[layer.mask for layer in layers],
        layers=layers,
        checks=list(checks),
        mask_cache=masks.cache_stats(),
        lse_source=", ".join(dict.fromkeys(rec.lse_source or run.backend for rec in run.records)),
        backend_choice=run.backend_choice,
    )


def report_set(reports: list[Report]) -> str:
    """The JSON of several runs' reports (``attnscope.report-set/1``); one report is written as itself."""
    if len(reports) == 1:
        return reports[0].to_json()
    return json.dumps(
        finite(
            {
                "schema": "attnscope.report-set/1",
                "passed": all(r.passed for r in reports),
                "reports": [r.to_dict() for r in reports],
            }
        ),
        indent=2,
        allow_nan=False,
    )


def pick_head(report: Report, layer: int | None = None, head: int | None = None) -> tuple[int, int, str]:
    """The (layer, head) to draw and why: as asked, or the most focused head, within `layer` or
    `head` when one is given. A UserError when the layer or head is out of range.

    The most focused head is the one with the highest `HeadStats.focus` (the mean over query rows of
    the largest weight on one key other than the first token, the query itself and the key before
    it) among heads with finite statistics: where a head looks that its position alone does not
    tell. A head that puts its weight on the first token (an attention sink), on itself or on the
    previous token scores near 0; so does broad attention (1/keys). Ties (a prompt of 3 tokens or
    fewer, where no row has such a key) go to the lowest mean entropy."""
    validate_head_range(layer, head, len(report.layers), len(report.layers[0].heads) if report.layers else 0)
    if layer is not None and head is not None:
        return layer, head, ""
    candidates = [
        (-h.focus, h.entropy, lr.index, h.head)
        for lr in report.layers
        for h in lr.heads
        if (layer is None or lr.index == layer)
        and (head is None or h.head == head)
        and isinstance(h.entropy, float)
        and isinstance(h.focus, float)
        and not h.nonfinite
    ]
    if not candidates:
        return layer or 0, head or 0, ""
    focus, _, best_layer, best_head = min(candidates)
    if focus == 0:  # no row has a key besides the first, itself and the previous
        return best_layer, best_head, " · lowest mean entropy"
    return best_layer, best_head, f" · most focused off token 0/self/previous ({-focus:.2f})"


def validate_head_range(layer: int | None, head: int | None, n_layers: int, n_heads: int) -> None:
    """A UserError when `layer` or `head` (None: not given) is outside a model's layers or heads."""
    if layer is not None and not 0 <= layer < n_layers:
        raise ArgumentError("layer", f"{layer} is out of range (the model has {n_layers} layers: 0..{n_layers - 1})")
    if head is not None and not 0 <= head < n_heads:
        raise ArgumentError("head", f"{head} is out of range (each layer has {n_heads} heads: 0..{n_heads - 1})")


def finite(value: Any) -> Any:
    """`value` (dicts, lists, numbers, strings) with every non-finite float as `json_number` writes it."""
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_number(x: float) -> float | str:
    """A float for JSON: NaN and infinities become the strings "nan", "inf", "-inf"."""
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return x
