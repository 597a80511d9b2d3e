"""Where two models' attention parts ways: the diff of two runs over the same token ids.

Model A is the reference (the original), model B the candidate (quantized, ported, fine-tuned).
`compare_runs` takes one parallel forward of each over the same ids (captured with each block's
output) and computes, per layer and query head:

- the largest absolute difference of the attention output;
- the largest absolute difference of the attention probabilities and the mean Jensen–Shannon
  divergence of the rows (in nats, 0 … ln 2), both recomputed from each model's q, k and lse a chunk
  of query rows at a time, as the inspector computes row statistics: no ``[T, T]`` matrix of all heads
  is ever stored;

per layer the largest differences of q, k, v and of the residual stream after the block; and the
logits' largest difference and top-1 agreement. The *first divergence* is the first layer where a
tolerance is crossed: in **attention** when the attention output or the probabilities of a head
differ (with which of its inputs q, k, v differ), else in the **residual stream** when only the
block's output differs (its output projection, norms or MLP). Layer 0's attention also shows a
different embedding. Tolerances are the checks' (`Tolerance`), B compared against A; probabilities
use atol as given (they are at most 1).

The two models are *identical* on a prompt when they ran in the same dtype and every layer's q, k,
v, attention output, lse and block output, and the logits, are equal bit for bit (NaN where NaN, -0
where -0): the probabilities, recomputed from q, k and the lse, are then equal bit for bit too. Each
model keeps its own dtype (a float32 model against its bfloat16 self); every statistic is computed in
float32.

`Comparison` is the data plus views: whether the runs are identical, the first divergence, the worst
head, the difference map of any head (exact or pooled, band by band), the findings as `Check`s (for
tables and JUnit), and the JSON entry of schema ``attnscope.compare/1`` (`compare_document`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from attnscope.backends.eager import masked_scores, weights_from_lse
from attnscope.engine import Layout
from attnscope.errors import UserError
from attnscope.inspector.capture import STATS_CHUNK_ELEMENTS, LayerRecord
from attnscope.inspector.checks import DEFAULT_TOLERANCES, Diff, Tolerance, diff
from attnscope.inspector.report import Check, json_number, model_info, tokens_of
from attnscope.inspector.result import record_at, validate_region
from attnscope.inspector.run import Run
from attnscope.pooling import pool_edges
from attnscope.prompts import Prompt

SCHEMA = "attnscope.compare/1"
LAYOUT_FIELDS = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size")


def require_same_layout(a: Layout, b: Layout, names: tuple[str, str] = ("A", "B")) -> None:
    """A UserError naming the first size in which two models' layouts differ."""
    for field in LAYOUT_FIELDS:
        va, vb = getattr(a, field), getattr(b, field)
        if va != vb:
            raise UserError(
                f"the models have different layouts: {field.removeprefix('n_')} is {va} in {names[0]} "
                f"and {vb} in {names[1]}"
            )


def require_same_tokens(
    ids_a: list[int], ids_b: list[int], texts_a: list[str], texts_b: list[str], names: tuple[str, str] = ("A", "B")
) -> None:
    """A UserError showing the first token where two tokenizations of the same prompt differ."""
    for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)):
        if x != y:
            raise UserError(
                f"the models tokenize the prompt differently: token {i} is {x} ({texts_a[i]!r}) in "
                f"{names[0]} and {y} ({texts_b[i]!r}) in {names[1]}"
            )
    if len(ids_a) != len(ids_b):
        i = min(len(ids_a), len(ids_b))
        longer, (name, texts) = (ids_a, (names[0], texts_a)) if len(ids_a) > i else (ids_b, (names[1], texts_b))
        raise UserError(
            f"the models tokenize the prompt differently: {names[0]} gives {len(ids_a)} tokens and "
            f"{names[1]} {len(ids_b)}; token {i} is {longer[i]} ({texts[i]!r}) in {name} only"
        )


def tolerance_for(a: torch.dtype, b: torch.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The tolerance of two models' comparison: the looser default of their dtypes (or as given)."""
    dtype = max((a, b), key=lambda d: DEFAULT_TOLERANCES[d][0])
    return Tolerance.for_dtype(dtype, atol, rtol)


def bitwise_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two tensors (or two Nones) have the same dtype, shape and bits."""
    if a is None or b is None:
        return a is b
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


RECORD_TENSORS = ("q", "k", "v", "out", "lse", "residual")  # what `Comparison.identical` compares per layer


def _widen(scores: torch.Tensor, span: slice, wider: slice) -> torch.Tensor:
    """Masked scores of the keys `span` as scores of the keys `wider` (-inf for the keys added)."""
    if span == wider:
        return scores
    out = scores.new_full((*scores.shape[:-1], wider.stop - wider.start), float("-inf"))
    out[..., span.start - wider.start : span.stop - wider.start] = scores
    return out


def _probability_diffs(a: LayerRecord, b: LayerRecord, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest |ΔP| of each row ``[B, Hq, Sq]``, Jensen–Shannon divergence of each row ``[B, Hq, Sq]``),
    0 on padding rows; from q·k·scale − lse, a chunk of query rows at a time."""
    B, Hq, Sq, _ = a.q.shape
    Hkv = a.k.shape[1]
    lse_a = a.kept_lse.float().view(B, Hkv, Hq // Hkv, Sq)
    lse_b = b.kept_lse.float().view(B, Hkv, Hq // Hkv, Sq)
    row_max = torch.zeros(B, Hkv, Hq // Hkv, Sq, device=a.q.device)
    js = torch.zeros_like(row_max)
    zero = torch.zeros((), device=a.q.device)
    chunks_a = masked_scores(a.q, a.k, a.mask, a.scale, STATS_CHUNK_ELEMENTS, a.softcap)
    chunks_b = masked_scores(b.q, b.k, b.mask, b.scale, STATS_CHUNK_ELEMENTS, b.softcap)
    for (rows, keys_a, scores_a, _), (_, keys_b, scores_b, _) in zip(chunks_a, chunks_b, strict=True):
        # each model computed the keys its own mask lets the rows see: compare on the span of both
        keys = slice(min(keys_a.start, keys_b.start), max(keys_a.stop, keys_b.stop))
        pa = weights_from_lse(_widen(scores_a, keys_a, keys), lse_a[..., rows])  # (B, Hkv, G, rows, keys)
        pb = weights_from_lse(_widen(scores_b, keys_b, keys), lse_b[..., rows])
        delta = torch.where(torch.isnan(pa) & torch.isnan(pb), zero, (pa - pb).abs())
        row_max[..., rows] = torch.where(torch.isnan(pa) ^ torch.isnan(pb), float("inf"), delta).amax(-1)
        mid = (pa + pb) / 2
        kl_a = torch.where(pa > 0, pa * (pa.log() - mid.log()), zero).sum(-1)
        kl_b = torch.where(pb > 0, pb * (pb.log() - mid.log()), zero).sum(-1)
        js[..., rows] = ((kl_a + kl_b) / 2).clamp_min(0)  # rounding can dip just below 0
    keep = real[:, None, -Sq:]  # (B, 1, Sq)
    return (row_max.view(B, Hq, Sq) * keep, js.view(B, Hq, Sq) * keep)


@dataclass
class Comparison:
    """Model B against model A on one prompt (see the module docstring)."""

    run_a: Run
    run_b: Run
    prompt: Prompt  # as given: text or ids
    tolerance: Tolerance
    output: list[Diff]  # per layer: the attention output, per query head
    residual: list[Diff]  # per layer: the block's output (one "head")
    qkv: list[dict[str, Diff]]  # per layer: "q" (per query head), "k" and "v" (per kv head)
    probability_rows: list[torch.Tensor]  # per layer: [B, Hq, Sq] largest |ΔP| of each row
    js_rows: list[torch.Tensor]  # per layer: [B, Hq, Sq] Jensen–Shannon divergence of each row
    logits: Diff  # [B, 1, T, vocab]
    top1: torch.Tensor  # [B, T] bool: both models' greedy next token agree (real rows)

    # ---- figures ---------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.output)

    @property
    def real(self) -> torch.Tensor:
        return self.run_a.inputs.real

    @functools.cached_property
    def output_max(self) -> np.ndarray:
        """[L, Hq] largest |Δ| of each head's attention output."""
        return np.stack([d.max_abs.cpu().numpy() for d in self.output])

    @functools.cached_property
    def probability_max(self) -> np.ndarray:
        """[L, Hq] largest |Δ| of each head's attention probabilities."""
        return np.stack(
            [r.amax(dim=(0, 2)).cpu().numpy() if r.numel() else np.zeros(r.shape[1]) for r in self.probability_rows]
        )

    @functools.cached_property
    def js_mean(self) -> np.ndarray:
        """[L, Hq] mean Jensen–Shannon divergence of each head's rows (real rows only), in nats."""
        n = max(1, int(self.real.sum()))
        return np.stack([r.sum(dim=(0, 2)).div(n).cpu().numpy() for r in self.js_rows])

    def over(self, layer: int) -> torch.Tensor:
        """[B, Hq, Sq] bool: rows of `layer` whose attention output or probabilities cross the tolerance."""
        prob = self.probability_rows[layer]
        return self.output[layer].bad_rows | ~(prob <= self.tolerance.atol)

    @functools.cached_property
    def heads_over(self) -> np.ndarray:
        """[L, Hq] bool: heads whose attention crosses the tolerance somewhere."""
        return np.stack([self.over(layer).any(dim=(0, 2)).cpu().numpy() for layer in range(self.n_layers)])

    @property
    def top1_agreement(self) -> float:
        """The fraction of real positions where both models predict the same next token."""
        n = int(self.real.sum())
        return float(self.top1[self.real].float().sum()) / n if n else 1.0

    def first_divergence(self) -> dict | None:
        """Where the models first part ways: ``{layer, stage, head, position, batch, differs}`` with stage
        "attention" (and `differs` the inputs among q, k, v that differ), "residual" or "logits"; None
        when nothing crosses the tolerance."""
        for layer in range(self.n_layers):
            place = _first(self.over(layer))
            if place is not None:
                b, h, s = place
                differs = [name for name, d in self.qkv[layer].items() if d.first_bad() is not None]
                return {"layer": layer, "stage": "attention", "head": h, "position": s, "batch": b, "differs": differs}
            place = self.residual[layer].first_bad()
            if place is not None:
                return {
                    "layer": layer,
                    "stage": "residual",
                    "head": None,
                    "position": place[2],
                    "batch": place[0],
                    "differs": [],
                }
        place = self.logits.first_bad()
        if place is not None:
            return {
                "layer": None,
                "stage": "logits",
                "head": None,
                "position": place[2],
                "batch": place[0],
                "differs": [],
            }
        return None

    def worst_head(self) -> tuple[int, int]:
        """(layer, head) of the largest mean Jensen–Shannon divergence (then the largest |ΔP|); NaN first."""
        js = np.nan_to_num(self.js_mean, nan=np.inf)
        prob = np.nan_to_num(self.probability_max, nan=np.inf)
        order = np.lexsort((-prob.ravel(), -js.ravel()))
        layer, head = np.unravel_index(order[0], js.shape)
        return int(layer), int(head)

    @functools.cached_property
    def identical(self) -> bool:
        """Whether the two runs are equal bit for bit: the same dtype, and every layer's q, k, v,
        attention output, lse and block output, and the logits, the same bits."""
        return bitwise_equal(self.run_a.logits, self.run_b.logits) and all(
            bitwise_equal(getattr(a, name), getattr(b, name))
            for a, b in zip(self.run_a.records, self.run_b.records, strict=True)
            for name in RECORD_TENSORS
        )

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks())

    # ---- views: those of a `Result`, of the difference |P_B − P_A| -------------------------------
    @functools.cached_property
    def records(self) -> list[RecordPair]:
        return [RecordPair(a, b) for a, b in zip(self.run_a.records, self.run_b.records, strict=True)]

    @property
    def n_heads(self) -> int:
        return self.run_a.model.layout.n_heads

    @property
    def backend(self) -> str:
        return self.run_a.backend

    @functools.cached_property
    def batch_ids(self) -> list[list[int]]:
        return self.run_a.inputs.ids.tolist()

    @property
    def ids(self) -> list[int]:
        return self.batch_ids[0]

    @functools.cached_property
    def tokens(self) -> list[str]:
        """The prompt's tokens as text (model A's tokenizer)."""
        return self.token_texts(self.ids)

    def token_texts(self, ids: list[int]) -> list[str]:
        return self.run_a.token_texts(ids)

    def row_tokens(self, batch: int = 0) -> list[str]:
        """The tokens of one row as text (the views ask a `Result` the same)."""
        return self.token_texts(self.batch_ids[batch])

    def record_at(self, layer: int, head: int | None = None) -> RecordPair:
        return record_at(self.records, self.n_heads, layer, head)

    def attention(
        self, layer: int, head: int, queries: slice = slice(None), keys: slice = slice(None), batch: int = 0
    ) -> torch.Tensor:
        """Float32 ``|P_B − P_A|`` ``[queries, keys]`` of one query head, recomputed from both models' q, k, lse."""
        pair = self.record_at(layer, head)
        validate_region(pair, queries, keys, batch)
        pa = pair.a.probabilities(head, queries, keys, batch)
        return (pair.b.probabilities(head, queries, keys, batch) - pa).abs()

    def attention_pooled(
        self,
        layer: int,
        head: int,
        height: int,
        width: int,
        reduce: str = "max",
        batch: int = 0,
        queries: slice = slice(None),
        keys: slice = slice(None),
    ) -> np.ndarray:
        """A ``height × width`` max- (or mean-) pooled map of ``|P_B − P_A|``, a band of query rows at a
        time: the full matrix is never built."""
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        pair = self.record_at(layer, head)
        validate_region(pair, queries, keys, batch)
        q0, q1, _ = queries.indices(pair.shape[0])
        k0, k1, _ = keys.indices(pair.shape[1])
        row_edges, col_edges = pool_edges(q1 - q0, height), pool_edges(k1 - k0, width)
        lengths = torch.as_tensor(np.diff(col_edges), device=pair.a.q.device)
        cells = []
        for start, stop in zip(row_edges[:-1].tolist(), row_edges[1:].tolist(), strict=True):
            band = self.attention(layer, head, slice(q0 + start, q0 + stop), slice(k0, k1), batch)  # (rows, Sk')
            if reduce == "max":
                cells.append(torch.segment_reduce(band.amax(dim=0), "max", lengths=lengths))
            else:
                cells.append(torch.segment_reduce(band.sum(dim=0), "sum", lengths=lengths) / (lengths * (stop - start)))
        return torch.stack(cells).cpu().numpy()

    def _repr_html_(self) -> str:
        """The interactive HTML report of |P_B − P_A| (`attnscope.htmlview`, as ``compare --html``
        writes it) in an iframe, as notebooks show a cell's value."""
        from attnscope.htmlview import comparisons_page, notebook_frame

        return notebook_frame(comparisons_page([(f"{self.run_b.model.name} vs {self.run_a.model.name}", self)]))

    # ---- findings --------------------------------------------------------------------------------
    def checks(self) -> list[Check]:
        """The findings as checks: ``divergence`` (no layer crosses the tolerance) and ``logits``."""
        tol = self.tolerance.as_dict()
        out, prob, js = self.output_max, self.probability_max, self.js_mean
        first = self.first_divergence()
        layer_first = first if first is not None and first["stage"] != "logits" else None
        figures = {
            "per_layer_output_max_abs_diff": [json_number(float(x)) for x in out.max(1)],
            "per_layer_probability_max_abs_diff": [json_number(float(x)) for x in prob.max(1)],
            "per_layer_js_mean_max": [json_number(float(x)) for x in js.max(1)],
            "per_layer_residual_max_abs_diff": [json_number(float(d.max_abs.max())) for d in self.residual],
            "tolerance": tol,
        }
        divergence = Check(
            "divergence", layer_first is None, figures, layer_first, _divergence_message(self, layer_first)
        )
        logits_max = float(self.logits.max_abs.max())
        agree, n = int(self.top1[self.real].sum()), int(self.real.sum())
        first_bad = self.logits.first_bad()
        logits_ok = first_bad is None
        where = None
        if first_bad is not None:
            b, _, s = first_bad
            where = {"layer": None, "head": None, "position": s, "batch": b, "stage": "logits"}
        message = f"logits max |Δ| {logits_max:.3g}; the greedy next token agrees at {agree}/{n} positions" + (
            "" if logits_ok else " (over tolerance)"
        )
        logits = Check(
            "logits",
            logits_ok,
            {
                "max_abs_diff": json_number(logits_max),
                "top1_agreement": json_number(agree / n if n else 1.0),
                "top1_disagreements": self.top1_disagreements(),
                "tolerance": tol,
            },
            where,
            message,
        )
        return [divergence, logits]

    def top1_disagreements(self, batch: int = 0) -> list[int]:
        """Positions where the two models' greedy next token differs."""
        return (~self.top1[batch] & self.real[batch]).nonzero().flatten().tolist()

    def to_dict(self, batch: int = 0) -> dict:
        """This prompt's entry of the ``attnscope.compare/1`` document."""
        out, prob, js, over = self.output_max, self.probability_max, self.js_mean, self.heads_over
        ids = self.run_a.inputs.ids[batch].tolist()
        worst = self.worst_head()
        layers = []
        for layer, rec in enumerate(self.run_a.records):
            qkv = {f"{name}_max_abs_diff": json_number(float(d.max_abs.max())) for name, d in self.qkv[layer].items()}
            heads = [
                {
                    "head": h,
                    "kv_head": h // rec.group_size,
                    "output_max_abs_diff": json_number(float(out[layer, h])),
                    "probability_max_abs_diff": json_number(float(prob[layer, h])),
                    "js_mean": json_number(float(js[layer, h])),
                    "over_tolerance": bool(over[layer, h]),
                }
                for h in range(out.shape[1])
            ]
            residual = json_number(float(self.residual[layer].max_abs.max()))
            layers.append({"index": layer, "residual_max_abs_diff": residual, **qkv, "heads": heads})
        checks = self.checks()
        return {
            "prompt": self.prompt if isinstance(self.prompt, str) else [int(i) for i in self.prompt],
            "tokens": [asdict(t) for t in tokens_of(self.run_a, ids)],
            "identical": self.identical,
            "first_divergence": self.first_divergence(),
            "logits": {key: checks[1].figures[key] for key in ("max_abs_diff", "top1_agreement", "top1_disagreements")},
            "worst_head": {
                "layer": worst[0],
                "head": worst[1],
                "js_mean": json_number(float(js[worst])),
                "probability_max_abs_diff": json_number(float(prob[worst])),
            },
            "layers": layers,
            "checks": [asdict(c) for c in checks],
            "passed": all(c.passed for c in checks),
        }


@dataclass(frozen=True)
class RecordPair:
    """One layer's records of both models, as the views of a `Result` read a record: its shape and
    mask (a key either model may attend to is allowed)."""

    a: LayerRecord
    b: LayerRecord

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape

    @property
    def q(self) -> torch.Tensor:
        return self.a.q

    @property
    def group_size(self) -> int:
        return self.a.group_size

    @property
    def mask(self):
        return self.a.mask if repr(self.a.mask) == repr(self.b.mask) else self.a.mask | self.b.mask

    def allowed(self, head: int, batch: int = 0) -> torch.Tensor:
        return self.a.allowed(head, batch) | self.b.allowed(head, batch)


def _first(bad: torch.Tensor) -> tuple[int, int, int] | None:
    """(batch, head, row) of the earliest row marked in ``[B, H, S]`` (then the lowest head), or None."""
    if not bool(bad.any()):
        return None
    b, h, s = bad.nonzero().unbind(1)
    i = int(torch.argmin(s * bad.shape[1] + h))
    return int(b[i]), int(h[i]), int(s[i])


def _divergence_message(c: Comparison, first: dict | None) -> str:
    if first is None:
        return "no layer crosses the tolerance: attention and the residual stream agree"
    layer = first["layer"]
    if first["stage"] == "residual":
        return (
            f"first divergence at layer {layer}, in the residual stream (its attention agrees; the block's "
            f"output projection, norms or MLP differ), position {first['position']} (max |Δ| "
            f"{float(c.residual[layer].max_abs.max()):.3g})"
        )
    if first["differs"]:
        inputs = f"{', '.join(first['differs'])} differ{'s' if len(first['differs']) == 1 else ''} beyond the tolerance"
    else:
        inputs = "q, k, v within the tolerance"
    out, prob = float(c.output_max[layer].max()), float(c.probability_max[layer].max())
    return (
        f"first divergence at layer {layer}, in attention (head {first['head']}, position {first['position']}; "
        f"{inputs}; max |Δ| of the output {out:.3g}, of the probabilities {prob:.3g})"
    )


@torch.inference_mode()
def compare_runs(run_a: Run, run_b: Run, prompt: Prompt, tolerance: Tolerance) -> Comparison:
    """Compare two runs of the same token ids (each captured with its residual stream)."""
    real = run_a.inputs.real
    output, residual, qkv, prob_rows, js_rows = [], [], [], [], []
    for a, b in zip(run_a.records, run_b.records, strict=True):
        if a.residual is None or b.residual is None:
            raise ValueError("compare_runs needs runs captured with residuals=True")
        output.append(diff(b.out, a.out, tolerance, rows=real))
        residual.append(diff(b.residual[:, None], a.residual[:, None], tolerance, rows=real))
        qkv.append({name: diff(getattr(b, name), getattr(a, name), tolerance, rows=real) for name in ("q", "k", "v")})
        rows_max, js = _probability_diffs(a, b, real)
        prob_rows.append(rows_max)
        js_rows.append(js)
    logits = diff(run_b.logits[:, None], run_a.logits[:, None], tolerance, rows=real)
    top1 = run_a.logits.argmax(-1) == run_b.logits.argmax(-1)  # (B, T)
    return Comparison(run_a, run_b, prompt, tolerance, output, residual, qkv, prob_rows, js_rows, logits, top1)


def compare_document(
    comparisons: list[Comparison], bisections: dict[int, Any] | None = None, interventions: dict[int, Any] | None = None
) -> str:
    """The JSON document (schema ``attnscope.compare/1``) of one or more prompts' comparisons of the
    same two models; with `bisections` (prompt index -> `attnscope.inspector.interventions.Bisection`),
    each of those prompts' entry holds its ``bisect``; with `interventions` (prompt index -> its
    `attnscope.inspector.interventions.PairEffect`), its ``interventions``."""
    from attnscope.inspector.report import finite

    bisections, interventions = bisections or {}, interventions or {}
    first = comparisons[0]
    a, b = first.run_a.model, first.run_b.model
    doc = {
        "schema": SCHEMA,
        "model_a": {**model_info(a), "dtype": dtype_name(a.dtype)},
        "model_b": {**model_info(b), "dtype": dtype_name(b.dtype)},
        "backend": first.run_a.backend,
        "device": str(a.device),
        "tolerance": first.tolerance.as_dict(),
        "identical": all(c.identical for c in comparisons),
        "passed": all(c.passed for c in comparisons),
        "prompts": [
            {
                **c.to_dict(),
                **({"bisect": bisections[n].to_dict()} if n in bisections else {}),
                **({"interventions": [finite(interventions[n].to_dict())]} if n in interventions else {}),
            }
            for n, c in enumerate(comparisons)
        ],
    }
    return json.dumps(doc, indent=2, allow_nan=False)


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" of torch.float32."""
    return str(dtype).removeprefix("torch.")
