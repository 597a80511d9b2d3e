"""Checks: does this attention do what it should, and if not, where does it first go wrong?

Each check returns a `Check` (name, passed, figures, where, message) and, where it compares
tensors, per (layer, head) figures that the report shows next to each head.

- ``nan``: NaN/Inf in scores, weights, outputs, the residual stream or the logits; names the first
  layer, stage, head and position in model order.
- ``masked_rows``: query rows of real tokens with no allowed key, and rows whose recomputed weights
  ``exp(q·k·scale - lse)`` do not sum to 1 (±1e-3): a wrong lse or a wrong mask.
- ``full_vs_incremental``: the prompt once in parallel and once token by token through the KV
  cache; per layer and head the largest difference of the attention output, and of the logits.
- ``backend_vs_reference``: the backend's attention output against the eager float32 reference on
  the very same q, k, v, per layer and head.
- ``causality``: change the tokens after position p and verify that nothing at positions <= p
  changes (bit-exact for eager in float32); a leak names the layer where it starts.

Tolerances follow HF transformers' attention tests: float32 atol 1e-5 / rtol 1e-4; float16 5e-3
and bfloat16 1e-2. The default atol is scaled by the reference's magnitude, max(1, max |ref|):
float32 rounding differences between two correct summation orders grow with the values (and with
the number of keys summed), so a fixed 1e-5 flags correct long prompts. An explicit --atol is
used as given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnscope.backends import get_backend
from attnscope.errors import UserError
from attnscope.inspector.capture import LayerBuffers, LayerRecord, nonfinite_counts
from attnscope.inspector.report import Check, json_number
from attnscope.inspector.run import Progress, Run, Step, step_of

CHECK_NAMES = ("nan", "masked_rows", "full_vs_incremental", "backend_vs_reference", "causality")
STAGES = ("scores", "weights", "output", "residual")
WEIGHT_SUM_TOLERANCE = 1e-3
DEFAULT_TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (1e-2, 1e-2)}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    scaled: bool  # atol multiplied by max(1, max |reference|)

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
        check_tolerance("atol", atol)
        check_tolerance("rtol", rtol)
        default_atol, default_rtol = DEFAULT_TOLERANCES[dtype]
        return cls(default_atol if atol is None else atol, default_rtol if rtol is None else rtol, scaled=atol is None)

    def as_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "atol_scaled_by_magnitude": self.scaled}


EXACT = Tolerance(0.0, 0.0, False)


def check_tolerance(name: str, value: float | None) -> None:
    """A UserError unless a tolerance (None: the default) is a finite number >= 0 (a NaN one would
    pass every comparison)."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class Diff:
    """Differences of two ``[B, H, S, D]`` tensors, per head, and the rows over tolerance."""

    max_abs: torch.Tensor  # [H]
    max_rel: torch.Tensor  # [H]
    bad_rows: torch.Tensor  # [B, H, S] bool: some element over tolerance (NaN counts as over)
    row_max: torch.Tensor | None = None  # [B, H, S] largest |Δ| of each row (per position)

    def first_bad(self) -> tuple[int, int, int] | None:
        """(batch, head, row) of the earliest row over tolerance, or None."""
        if not bool(self.bad_rows.any()):
            return None
        b, h, s = self.bad_rows.nonzero().unbind(1)
        i = int(torch.argmin(s * self.bad_rows.shape[1] + h))
        return int(b[i]), int(h[i]), int(s[i])


# elements of a band of rows compared at once by `diff`: each element takes a few float and bool
# temporaries, which over a prompt's logits (``[B, 1, T, vocab]``) would be gigabytes at once
DIFF_CHUNK_ELEMENTS = 1 << 22


def diff(actual: torch.Tensor, reference: torch.Tensor, tol: Tolerance, rows: torch.Tensor | None = None) -> Diff:
    """Compare ``[B, H, S, D]`` tensors elementwise: over tolerance where |a - r| > atol + rtol·|r|,
    a band of rows (S) at a time, so the temporaries stay near `DIFF_CHUNK_ELEMENTS` elements.

    Args:
        rows: optional bool ``[B, S]`` of the rows to compare (e.g. real tokens, not padding).
    """
    B, H, S, D = actual.shape
    if not actual.numel():
        return Diff(torch.zeros(H), torch.zeros(H), torch.zeros(B, H, S, dtype=torch.bool, device=actual.device))
    step = max(1, DIFF_CHUNK_ELEMENTS // (B * H * D))
    bands = [slice(start, start + step) for start in range(0, S, step)]
    atol = tol.atol
    if tol.scaled:  # scaled by the largest finite |reference| of the whole tensor (one read-back)
        atol *= max(1.0, float(torch.stack([_finite_abs(reference[:, :, band]).amax() for band in bands]).amax()))
    parts = [_band_diff(actual[:, :, band], reference[:, :, band], atol, tol.rtol,
                        None if rows is None else rows[:, band]) for band in bands]
    return Diff(torch.stack([p.max_abs for p in parts]).amax(0), torch.stack([p.max_rel for p in parts]).amax(0),
                torch.cat([p.bad_rows for p in parts], 2), torch.cat([p.row_max for p in parts], 2))


def _band_diff(actual: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float,
               rows: torch.Tensor | None) -> Diff:
    """`diff` of one band of rows, with the tolerance's atol already scaled."""
    a, r = actual.float(), reference.float()
    err = (a - r).abs_()  # (B, H, S, D); the temporaries below are one bool or float tensor of this size each
    nan_a, nan_r = torch.isnan(a), torch.isnan(r)
    # NaN on one side only is a difference; NaN on both sides is the same (the nan check reports it)
    err.masked_fill_(nan_a & nan_r, 0.0).masked_fill_(nan_a.logical_xor_(nan_r), float("inf"))
    del nan_a, nan_r
    if rows is not None:
        err.masked_fill_(~rows[:, None, :, None], 0.0)
    per_head = (0, 2, 3)
    max_rel = (err / r.abs().clamp_min_(1e-6)).amax(dim=per_head)
    over = err > _finite_abs(r).mul_(rtol).add_(atol)
    return Diff(err.amax(dim=per_head), max_rel, over.any(-1), err.amax(-1))


def _finite_abs(x: torch.Tensor) -> torch.Tensor:
    """|x| in float32 where x is finite, 0 where it is NaN or ±inf (a new tensor)."""
    return torch.nan_to_num(x.float().abs(), nan=0.0, posinf=0.0)


def _figures(d: Diff, tol: Tolerance) -> dict:
    return {"max_abs_diff": json_number(float(d.max_abs.max())) if d.max_abs.numel() else 0.0,
            "max_rel_diff": json_number(float(d.max_rel.max())) if d.max_rel.numel() else 0.0,
            "tolerance": tol.as_dict()}


def _layer_diffs(records: list[LayerRecord], others: list[LayerRecord], tol: Tolerance, rows=None,
                 upto: int | None = None) -> list[Diff]:
    sl = slice(None, upto)
    kept = LayerBuffers(len(records))
    return [kept.keep_fields(i, diff(a.out[:, :, sl], b.out[:, :, sl], tol, None if rows is None else rows[:, sl]))
            for i, (a, b) in enumerate(zip(records, others, strict=True))]


def _first_failing(diffs: list[Diff]) -> tuple[int, tuple[int, int, int]] | None:
    for layer, d in enumerate(diffs):
        place = d.first_bad()
        if place is not None:
            return layer, place
    return None


# ---- the checks ------------------------------------------------------------------------------


def nan_check(run: Run, step: Step | None = None) -> Check:
    """NaN/Inf anywhere in the forward pass, localized to the first layer, stage, head and position."""
    counts = dict.fromkeys((*STAGES, "logits"), 0)
    first = None
    for rec in run.records:
        stats = rec.stats
        per_stage = {"scores": stats.nonfinite_scores, "weights": stats.nonfinite_weights,
                     "output": stats.nonfinite_output}
        for stage in STAGES:
            if stage == "residual":
                bad = rec.residual_nonfinite
                if bad is None:
                    continue
                bad = bad[:, None, :]  # (B, 1, Sq): no head
            else:
                bad = per_stage[stage]
            counts[stage] += int(bad.sum())
            if first is None and bool((bad > 0).any()):
                b, h, s = (bad > 0).nonzero().unbind(1)
                i = int(torch.argmin(s * bad.shape[1] + h))
                first = {"layer": rec.layer, "stage": stage, "head": None if stage == "residual" else int(h[i]),
                         "position": int(s[i]), "batch": int(b[i])}
        if step is not None:
            step(rec.layer + 1, len(run.records))
    logits_bad = nonfinite_counts(run.logits)  # (B, T)
    counts["logits"] = int(logits_bad.sum())
    if first is None and counts["logits"]:
        pos = logits_bad.nonzero()[0]
        first = {"layer": None, "stage": "logits", "head": None, "position": int(pos[1]), "batch": int(pos[0])}
    passed = first is None
    message = "no NaN or Inf" if passed else (
        f"first non-finite value at layer {first['layer']}, stage {first['stage']}"
        + (f", head {first['head']}" if first["head"] is not None else "") + f", position {first['position']}")
    return Check("nan", passed, {"nonfinite_counts": counts}, first, message)


def masked_rows_check(run: Run) -> Check:
    """Query rows of real tokens with no allowed key; rows whose weights (and sink) do not sum to 1."""
    real = run.inputs.real  # (B, T) bool
    empty, off = [], []
    worst = 0.0
    for rec in run.records:
        stats = rec.stats
        rows_real = real[:, None, -stats.fully_masked.shape[2]:].expand_as(stats.fully_masked)
        e = stats.fully_masked & rows_real
        dev = (stats.weight_sum + stats.sink_weight - 1).abs()
        finite = stats.nonfinite_weights == 0  # rows with NaN/Inf weights are the nan check's finding
        o = (~stats.fully_masked) & rows_real & finite & (dev > WEIGHT_SUM_TOLERANCE)
        if bool(o.any()):
            worst = max(worst, float(torch.nan_to_num(dev[o], nan=float("inf")).max()))
        for kind, found in ((empty, e), (off, o)):
            for b, h, s in found.nonzero().tolist()[:50]:
                kind.append({"layer": rec.layer, "head": h, "position": s, "batch": b})
    where = (empty or off or [None])[0]
    passed = not empty and not off
    padding_rows = sum(int((rec.stats.fully_masked & ~real[:, None, :]).sum()) for rec in run.records)
    message = "every real query row has keys and weights summing to 1" if passed else (
        f"{len(empty)} real query row(s) with no allowed key" if empty else
        f"{len(off)} row(s) whose weights do not sum to 1 (worst |sum - 1| = {worst:.3g})")
    figures = {"fully_masked_rows": empty[:20], "bad_weight_sums": off[:20],
               "max_weight_sum_error": json_number(worst), "tolerance": WEIGHT_SUM_TOLERANCE,
               "padding_rows_fully_masked": padding_rows}
    return Check("masked_rows", passed, figures, where and {**where, "stage": "weights"}, message)


def full_vs_incremental_check(run: Run, tol: Tolerance, step: Step | None = None) -> tuple[Check, list[Diff]]:
    """The prompt token by token through the KV cache against the parallel forward."""
    with torch.inference_mode():
        records, logits_inc = run.incremental(step)  # logits (B, T, vocab)
    real = run.inputs.real
    diffs = _layer_diffs(records, run.records, tol, rows=real)
    logits_diff = diff(logits_inc[:, None], run.logits[:, None], tol, rows=real)
    figures = _figures(_merge(diffs), tol)
    figures["logits_max_abs_diff"] = json_number(float(logits_diff.max_abs.max()))
    figures["per_layer_max_abs_diff"] = [json_number(float(d.max_abs.max())) for d in diffs]
    failing = _first_failing(diffs)
    where, message = None, "incremental decoding matches the full forward"
    if failing is not None:
        layer, (b, h, s) = failing
        where = {"layer": layer, "head": h, "position": s, "batch": b, "stage": "output"}
        message = (f"incremental attention output differs from the full forward from layer {layer} on "
                   f"(head {h}, position {s}; max |Δ| {float(diffs[layer].max_abs.max()):.3g})")
    elif logits_diff.first_bad() is not None:
        b, _, s = logits_diff.first_bad()
        where = {"layer": None, "head": None, "position": s, "batch": b, "stage": "logits"}
        message = f"logits differ at position {s} (max |Δ| {float(logits_diff.max_abs.max()):.3g})"
    return Check("full_vs_incremental", where is None, figures, where, message), diffs


def backend_vs_reference_check(run: Run, tol: Tolerance, step: Step | None = None) -> tuple[Check, list[Diff]]:
    """The backend's output against eager float32 on the same q, k, v, layer by layer."""
    eager = get_backend("eager")
    diffs, kept = [], LayerBuffers(len(run.records))
    for i, rec in enumerate(run.records):
        features = {"softcap": rec.softcap, "sinks": rec.sinks}  # the layer's own, as the backend ran them
        ref, _ = eager(rec.q.float(), rec.k.float(), rec.v.float(), rec.mask, rec.scale, need_lse=False,
                       **{name: value for name, value in features.items() if value is not None})
        diffs.append(kept.keep_fields(i, diff(rec.out, ref, tol, rows=run.inputs.real[:, -rec.q.shape[2]:])))
        del ref  # before the next layer's is computed
        if step is not None:
            step(rec.layer + 1, len(run.records))
    figures = _figures(_merge(diffs), tol)
    figures["per_layer_max_abs_diff"] = [json_number(float(d.max_abs.max())) for d in diffs]
    failing = _first_failing(diffs)
    if failing is None:
        return Check("backend_vs_reference", True, figures, None,
                     f"{run.backend} matches the eager float32 reference"), diffs
    layer, (b, h, s) = failing
    where = {"layer": layer, "head": h, "position": s, "batch": b, "stage": "output"}
    return Check("backend_vs_reference", False, figures, where,
                 f"{run.backend} differs from eager at layer {layer}, head {h}, position {s} "
                 f"(max |Δ| {float(diffs[layer].max_abs.max()):.3g})"), diffs


def causality_check(run: Run, tol: Tolerance, cut_points: list[int] | None = None, step: Step | None = None) -> Check:
    """Change the tokens after position p; outputs at positions <= p must not change."""
    ids = run.inputs.ids
    T = ids.shape[1]
    vocab = run.model.layout.vocab_size
    if cut_points is None:
        cut_points = sorted({p for p in (T // 4, T // 2, (3 * T) // 4) if 0 <= p < T - 1})
    exact = run.exact
    tol = EXACT if exact else tol
    worst, first = 0.0, None
    for n, p in enumerate(cut_points):
        if step is not None:
            step(n, len(cut_points))
        changed = ids.clone()
        changed[:, p + 1:] = (ids[:, p + 1:] + 1 + torch.arange(T - p - 1, device=ids.device)) % vocab
        with torch.inference_mode():
            records = run.rerun(changed)
        diffs = _layer_diffs(records, run.records, tol, rows=run.inputs.real, upto=p + 1)
        worst = max(worst, max(float(d.max_abs.max()) for d in diffs))
        failing = _first_failing(diffs)
        if failing is not None and (first is None or failing[0] < first["layer"]):
            layer, (b, h, s) = failing
            first = {"layer": layer, "head": h, "position": s, "batch": b, "stage": "output", "cut": p}
    if step is not None:
        step(len(cut_points), len(cut_points))
    figures = {"cut_points": cut_points, "max_abs_diff": json_number(worst), "tolerance": tol.as_dict(),
               "bit_exact": exact}
    if first is None:
        return Check("causality", True, figures, None,
                     f"no position <= p changes when later tokens change (p in {cut_points})")
    return Check("causality", False, figures, first,
                 f"changing tokens after position {first['cut']} changes position {first['position']} "
                 f"from layer {first['layer']} on (head {first['head']}): a future-token leak")


def _merge(diffs: list[Diff]) -> Diff:
    return Diff(torch.stack([d.max_abs for d in diffs]).amax(0), torch.stack([d.max_rel for d in diffs]).amax(0),
                torch.zeros(0, dtype=torch.bool))


def parse_checks(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The check names of a selection: "all", "none" (or None), "nan,causality", or a sequence of names."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("all", "none"):
            return CHECK_NAMES if text == "all" else ()
        spec = text.split(",")
    names = tuple(dict.fromkeys(str(n).strip() for n in spec if str(n).strip()))
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown:
        raise UserError(f"unknown check {unknown[0]!r} (choose from: {', '.join(CHECK_NAMES)}, all, none)")
    return names


def run_checks(run: Run, names: Sequence[str] = CHECK_NAMES, atol: float | None = None, rtol: float | None = None,
               on_check=None, progress: Progress | None = None) -> tuple[list[Check], dict[str, list[Diff]]]:
    """Run the named checks on a run. Returns (checks, per-layer diffs by check name).
    `on_check(check)` is called as each one finishes; `progress(done, total, name)` as each loops
    (layers, tokens × layers of full_vs_incremental, perturbations of causality)."""
    names = parse_checks(names)
    tol = Tolerance.for_dtype(run.model.dtype, atol, rtol)
    checks, diffs = [], {}
    for name in names:
        step = step_of(progress, name)
        if name == "nan":
            checks.append(nan_check(run, step))
        elif name == "masked_rows":
            checks.append(masked_rows_check(run))
        elif name == "full_vs_incremental":
            check, diffs[name] = full_vs_incremental_check(run, tol, step)
            checks.append(check)
        elif name == "backend_vs_reference":
            check, diffs[name] = backend_vs_reference_check(run, tol, step)
            checks.append(check)
        elif name == "causality":
            checks.append(causality_check(run, tol, step=step))
        if on_check is not None:
            on_check(checks[-1])
    return checks, diffs
