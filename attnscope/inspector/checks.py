"""Checks: does this attention do what it should, and if not, where does it first go wrong?

Each check returns a `Check` (name, passed, figures, where, message) and, where it compares
tensors, per (layer, head) figures that the report shows next to each head.

- ``nan``: NaN/Inf in q, k, v, scores, weights, outputs, the residual stream or the logits; names the
  first layer, then the first stage in the order the computation makes them (q, k and v before the
  scores: a NaN k is named at k, its kv head and the query heads that read it, not at the scores of
  one of them), then position and head; padding positions do not count.
- ``masked_rows``: query rows of real tokens with no allowed key, and rows whose recomputed weights
  ``exp(q·k·scale - lse)`` do not sum to 1 (±1e-3): a wrong lse or a wrong mask.
- ``full_vs_incremental``: the prompt once in parallel and once a token at a time through the KV
  cache. Two figures. *In isolation* (the finding's layer): every layer's attention output and lse
  computed both ways on the same input, the parallel forward's own input to that layer
  (`Run.isolated`), so what earlier layers did is not charged to it. *Free-running* (end to end):
  the token-by-token pass on its own hidden states, per layer, and its logits.
- ``backend_vs_reference``: the backend's output against the eager float32 reference on the very
  same q, k, v, per layer and head (skipped, and said so, when the backend is that reference).
- ``causality``: change the tokens after position p and verify that nothing at positions <= p
  changes beyond what a rerun of the same tokens changes (bit-exact for eager in float32); a leak
  names the layer where it starts.

Tolerances. float32: HF transformers' attention tests, atol 1e-5 / rtol 1e-4, the atol scaled by
the reference's magnitude, max(1, max |ref|) (float32 rounding between two correct summation orders
grows with the values and with the number of keys summed). float16 and bfloat16: flash-attention's
rule (`Tolerance.calibrated`): per head, the path under test may deviate from a float32 computation
on the same inputs by at most `RULE_FACTOR` times what the low-precision baseline deviates from it,
plus a small atol; where no float32 computation could run, the dtype's constants (float16 5e-3,
bfloat16 1e-2) and the report says so. An explicit --atol/--rtol is used as given, uncalibrated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnscope.backends import eager, get_backend
from attnscope.errors import UserError
from attnscope.inspector.capture import LayerBuffers, LayerRecord, nonfinite_counts
from attnscope.inspector.incremental import Mode, parse_mode
from attnscope.inspector.report import Check, json_number
from attnscope.inspector.run import Progress, Run, Step, step_of

CHECK_NAMES = ("nan", "masked_rows", "full_vs_incremental", "backend_vs_reference", "causality")
QKV = ("q", "k", "v")
STAGES = (*QKV, "scores", "weights", "output", "residual")  # the nan check's order within a layer
WEIGHT_SUM_TOLERANCE = 1e-3
DEFAULT_TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (1e-2, 1e-2)}
HALF = (torch.float16, torch.bfloat16)
# flash-attention's rule for float16/bfloat16 (its tests: `(out - out_ref).abs().max() <= 2 *
# (out_pt - out_ref).abs().max() + 1e-5`): the factor over the baseline's own error. 2 leaves room for
# a path that rounds in other places than the baseline (another kernel, another summation order)
# while an error twice the precision's own is a bug's, not rounding's; measured on the 24-layer
# deep-random sample, a correct incremental path's error is 1.00-1.08x the parallel path's.
RULE_FACTOR = 2.0
# plus one unit of the dtype's precision (eps) at the head's magnitude, max(1, max |reference|): the
# baseline's error is a maximum over the head's rows, which a short prompt has few of, and a correct
# path may differ from it by one rounding of the output (flash-attention's tests take the maximum
# over a whole tensor, with a fixed 1e-5)


@dataclass(frozen=True)
class Tolerance:
    """What counts as a difference. Constant: |a - r| > atol + rtol·|r|. Calibrated (``factor`` set,
    float16/bfloat16): per head, |a - ref32| > factor · max |baseline - ref32| + atol, where ref32 is
    a float32 computation on the same inputs and the baseline the low-precision path that the one
    under test is compared with (flash-attention's rule); `fallback` is the constant tolerance used
    where no float32 computation could run."""

    atol: float
    rtol: float
    scaled: bool  # atol multiplied by max(1, max |reference|)
    factor: float | None = None  # calibrated: the factor over the baseline's own error vs float32
    fallback: Tolerance | None = None
    given: bool = False  # from an explicit --atol/--rtol

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, atol: float | None = None, rtol: float | None = None) -> Tolerance:
        validate_tolerance("atol", atol)
        validate_tolerance("rtol", rtol)
        default_atol, default_rtol = DEFAULT_TOLERANCES[dtype]
        constant = cls(
            default_atol if atol is None else atol,
            default_rtol if rtol is None else rtol,
            scaled=atol is None,
            given=atol is not None or rtol is not None,
        )
        if dtype in HALF and atol is None and rtol is None:
            return cls.rule(dtype, constant)
        return constant

    @classmethod
    def rule(cls, dtype: torch.dtype, fallback: Tolerance | None = None) -> Tolerance:
        """flash-attention's rule in `dtype`: `RULE_FACTOR` times the baseline's error, plus one unit of
        the dtype's precision (its eps) at the head's magnitude, max(1, max |reference|)."""
        return cls(torch.finfo(dtype).eps, 0.0, True, RULE_FACTOR, fallback)

    @property
    def calibrated(self) -> bool:
        return self.factor is not None

    def uncalibrated(self) -> Tolerance:
        """The constant tolerance to use where no float32 reference is at hand."""
        return self.fallback or self

    def as_dict(self) -> dict:
        if self.calibrated:
            return {
                "rule": "flash-attention",
                "factor": self.factor,
                "atol": self.atol,
                "atol_scaled_by_magnitude": self.scaled,
                "uncalibrated": None if self.fallback is None else self.fallback.as_dict(),
            }
        return {"atol": self.atol, "rtol": self.rtol, "atol_scaled_by_magnitude": self.scaled}


EXACT = Tolerance(0.0, 0.0, False)


def validate_tolerance(name: str, value: float | None) -> None:
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
    # calibrated comparisons (`compare`): per head, the largest error vs float32 of the path under
    # test, of the baseline, and the limit the first was held to
    error: torch.Tensor | None = None  # [H]
    noise: torch.Tensor | None = None  # [H]
    limit: torch.Tensor | None = None  # [H]

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


def diff(
    actual: torch.Tensor,
    reference: torch.Tensor,
    tol: Tolerance,
    rows: torch.Tensor | None = None,
    limit: torch.Tensor | None = None,
) -> Diff:
    """Compare ``[B, H, S, D]`` tensors elementwise: over tolerance where |a - r| > atol + rtol·|r|
    (or, given `limit` ``[H]``, where |a - r| > the head's limit), a band of rows (S) at a time, so the
    temporaries stay near `DIFF_CHUNK_ELEMENTS` elements.

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
    parts = [
        _band_diff(
            actual[:, :, band], reference[:, :, band], atol, tol.rtol, None if rows is None else rows[:, band], limit
        )
        for band in bands
    ]
    return Diff(
        torch.stack([p.max_abs for p in parts]).amax(0),
        torch.stack([p.max_rel for p in parts]).amax(0),
        torch.cat([p.bad_rows for p in parts], 2),
        torch.cat([_row_max(p) for p in parts], 2),
    )


def _band_diff(
    actual: torch.Tensor,
    reference: torch.Tensor,
    atol: float,
    rtol: float,
    rows: torch.Tensor | None,
    limit: torch.Tensor | None = None,
) -> Diff:
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
    over = err > (_finite_abs(r).mul_(rtol).add_(atol) if limit is None else limit.view(1, -1, 1, 1))
    return Diff(err.amax(dim=per_head), max_rel, over.any(-1), err.amax(-1))


def compare(
    actual: torch.Tensor,
    baseline: torch.Tensor,
    reference: torch.Tensor | None,
    tol: Tolerance,
    rows: torch.Tensor | None = None,
    delta: str = "baseline",
) -> Diff:
    """`actual` against `baseline` ``[B, H, S, D]``, two low-precision computations of what `reference`
    computes in float32 on the same inputs. With a calibrated tolerance and a reference,
    flash-attention's rule, per head h: a row is over where some |actual - reference| exceeds
    ``factor · max |baseline - reference|_h + atol · max(1, max |reference|_h)``; else the constant
    tolerance. ``max_abs``, ``max_rel`` and ``row_max`` are those of actual - baseline (or, with
    ``delta="reference"``, of actual - reference).

    Args:
        reference: the float32 computation, or None where none could run (the constant tolerance).
        rows: optional bool ``[B, S]`` of the rows to compare.
    """
    if not tol.calibrated or reference is None:
        return diff(
            actual, baseline if delta == "baseline" or reference is None else reference, tol.uncalibrated(), rows
        )
    shown = diff(actual, baseline if delta == "baseline" else reference, EXACT, rows)
    noise = _noise(baseline, reference, rows)  # (H,)
    magnitude = _head_magnitude(reference) if tol.scaled else torch.ones_like(noise)
    limit = noise * (tol.factor or 0.0) + magnitude.clamp_min(1.0) * tol.atol  # (H,)
    error = diff(actual, reference, EXACT, rows, limit=limit)
    return Diff(shown.max_abs, shown.max_rel, error.bad_rows, shown.row_max, error.max_abs, noise, limit)


def _noise(baseline: torch.Tensor, reference: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """max |baseline - reference| of each head of ``[B, H, S, D]`` over the rows compared, where both
    are finite (a NaN or Inf is the nan check's finding, not a precision's noise), ``[H]`` float32, a
    band of rows at a time."""
    B, H, S, D = baseline.shape
    step = max(1, DIFF_CHUNK_ELEMENTS // max(1, B * H * D))
    bands = []
    for i in range(0, S, step):
        err = (baseline[:, :, i : i + step].float() - reference[:, :, i : i + step].float()).abs_()
        err = torch.nan_to_num_(err, nan=0.0, posinf=0.0)
        if rows is not None:
            err.masked_fill_(~rows[:, None, i : i + step, None], 0.0)
        bands.append(err.amax(dim=(0, 2, 3)))
    return torch.stack(bands).amax(0) if bands else torch.zeros(H, device=baseline.device)


def _head_magnitude(x: torch.Tensor) -> torch.Tensor:
    """max |x| over the finite values of each head of ``[B, H, S, D]``, ``[H]`` float32, a band of rows
    at a time."""
    B, H, S, D = x.shape
    step = max(1, DIFF_CHUNK_ELEMENTS // max(1, B * H * D))
    bands = [_finite_abs(x[:, :, i : i + step]).amax(dim=(0, 2, 3)) for i in range(0, S, step)]
    return torch.stack(bands).amax(0) if bands else torch.zeros(H, device=x.device)


def _row_max(d: Diff) -> torch.Tensor:
    assert d.row_max is not None  # `_band_diff` always sets it
    return d.row_max


def _finite_abs(x: torch.Tensor) -> torch.Tensor:
    """|x| in float32 where x is finite, 0 where it is NaN or ±inf (a new tensor)."""
    return torch.nan_to_num(x.float().abs(), nan=0.0, posinf=0.0)


def _figures(d: Diff, tol: Tolerance) -> dict:
    return {
        "max_abs_diff": json_number(float(d.max_abs.max())) if d.max_abs.numel() else 0.0,
        "max_rel_diff": json_number(float(d.max_rel.max())) if d.max_rel.numel() else 0.0,
        "tolerance": tol.as_dict(),
    }


def _first_failing(diffs: list[Diff]) -> tuple[int, tuple[int, int, int]] | None:
    for layer, d in enumerate(diffs):
        place = d.first_bad()
        if place is not None:
            return layer, place
    return None


# ---- the checks ------------------------------------------------------------------------------


def nan_check(run: Run, step: Step | None = None) -> Check:
    """NaN/Inf anywhere in the forward pass, named at its origin: the first layer, then the first stage
    of that layer in the order the computation makes them (`STAGES`: q, k and v, then the scores, the
    weights, the attention output, the block's output; the logits last), then the first position,
    head and batch row. For k or v the kv head is named with the query heads that read it (``head``
    is the first of them, so every reader of ``where`` has a query head to show). Padding positions
    are not counted: a NaN there is a finding only where it reaches a real token's computation (a
    padding key's NaN value times its weight 0 is NaN); when the first finding is in a row's attention
    (scores, weights or output) and that row's padding k or v is non-finite, ``padding_nonfinite``
    says which."""
    real = run.inputs.real  # (B, T) bool
    counts = dict.fromkeys((*STAGES, "logits"), 0)
    first: dict[str, Any] | None = None
    for rec in run.records:
        bad, padding = _nonfinite_by_stage(rec, real)
        for stage, found in bad.items():
            counts[stage] += int(found.sum())
            if first is None and bool(found.any()):
                first = _first_nonfinite(rec, stage, found, bad)
                if stage in ("scores", "weights", "output"):
                    from_padding = [name for name in ("k", "v") if bool(padding[name][first["batch"]])]
                    if from_padding:
                        first["padding_nonfinite"] = from_padding
        if step is not None:
            step(rec.layer + 1, len(run.records))
    logits_bad = nonfinite_counts(run.logits).masked_fill_(~_real_positions(real, run.logits.shape[1]), 0)  # (B, T)
    counts["logits"] = int(logits_bad.sum())
    if first is None and counts["logits"]:
        pos = logits_bad.nonzero()[0]
        first = {"layer": None, "stage": "logits", "head": None, "position": int(pos[1]), "batch": int(pos[0])}
    shards = getattr(run.model, "shards", None)  # tensor parallel: name the rank that holds the head
    if first is not None and shards is not None and shards.held_by(first) is not None:
        first["rank"] = shards.held_by(first)
    message = "no NaN or Inf" if first is None else _nonfinite_message(first, batched=real.shape[0] > 1)
    return Check("nan", first is None, {"nonfinite_counts": counts}, first, message)


def _real_positions(real: torch.Tensor, n: int) -> torch.Tensor:
    """Bool ``[B, n]``: which of the last `n` positions of the run are real tokens (`real` ``[B, T]``);
    positions before the inputs (a cache's past) count as real."""
    B, T = real.shape
    if n <= T:
        return real[:, T - n :]
    return torch.cat([real.new_ones(B, n - T), real], 1)


def _nonfinite_by_stage(
    rec: LayerRecord, real: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each stage's count of NaN/Inf values of one layer ``[B, H|1, S]`` (q and the rows: query heads ×
    query rows; k and v: kv heads × keys; the residual: no head), 0 at padding positions; and for k and
    v, bool ``[B]``: whether the row has one at a padding position."""
    Sq, Sk = rec.shape
    rows = _real_positions(real, Sq)[:, None, :]  # (B, 1, Sq)
    keys = _real_positions(real, Sk)[:, None, :]  # (B, 1, Sk)
    k, v = nonfinite_counts(rec.k), nonfinite_counts(rec.v)  # (B, Hkv, Sk)
    padding = {name: (x * ~keys).sum((1, 2)) > 0 for name, x in (("k", k), ("v", v))}  # (B,)
    stats = rec.stats
    bad = {
        "q": nonfinite_counts(rec.q).masked_fill_(~rows, 0),  # (B, Hq, Sq)
        "k": k.masked_fill_(~keys, 0),
        "v": v.masked_fill_(~keys, 0),
        "scores": stats.nonfinite_scores.masked_fill(~rows, 0),  # (B, Hq, Sq)
        "weights": stats.nonfinite_weights.masked_fill(~rows, 0),
        "output": stats.nonfinite_output.masked_fill(~rows, 0),
    }
    if rec.residual_nonfinite is not None:
        bad["residual"] = rec.residual_nonfinite[:, None, :].masked_fill(~rows, 0)  # (B, 1, Sq)
    return bad, padding


def _first_nonfinite(rec: LayerRecord, stage: str, found: torch.Tensor, bad: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The `where` of the first non-finite value of one stage of a layer, `found` ``[B, H|1, S]``: the
    first position, then head, then batch row. For k and v the kv head and the query heads that read
    it (``head`` the first of them); for q, k and v also `tensors`: those of the three that are
    non-finite at that position of that batch row (all three: what they are all computed from, the
    layer's input, is)."""
    b, h, s = (found > 0).nonzero().unbind(1)
    i = int(torch.argmin(s * found.shape[1] + h))
    batch, head, position = int(b[i]), int(h[i]), int(s[i])
    where: dict[str, Any] = {"layer": rec.layer, "stage": stage, "head": None if stage == "residual" else head}
    if stage in ("k", "v"):
        G = rec.group_size
        where.update(head=head * G, kv_head=head, query_heads=list(range(head * G, (head + 1) * G)))
    where.update(position=position, batch=batch)
    if stage in QKV:
        past = rec.shape[1] - rec.shape[0]  # keys before the first query row: query row i is key past + i
        key = position + past if stage == "q" else position
        at = {"q": key - past, "k": key, "v": key}
        where["tensors"] = [
            name for name in QKV if 0 <= at[name] < bad[name].shape[2] and bool(bad[name][batch, :, at[name]].any())
        ]
    return where


def _nonfinite_message(where: dict[str, Any], batched: bool = False) -> str:
    """One line naming the first NaN/Inf of a `nan` check's `where`: e.g. "first NaN/Inf: layer 12, k of
    kv head 1 (read by query heads 3–5), position 0"."""
    stage = where["stage"]
    if stage in ("k", "v"):
        heads = where["query_heads"]
        readers = f"query head {heads[0]}" if len(heads) == 1 else f"query heads {heads[0]}–{heads[-1]}"
        what = f"{stage} of kv head {where['kv_head']} (read by {readers})"
    elif stage == "residual":
        what = "residual stream (the block's output)"
    elif stage == "logits":
        what = "logits"
    else:
        named = {"q": "q", "scores": "scores", "weights": "weights", "output": "attention output"}[stage]
        what = f"{named} of query head {where['head']}"
    parts = [f"layer {where['layer']}"] if where.get("layer") is not None else []
    parts += [what, f"position {where['position']}"]
    if where.get("rank") is not None:
        parts.append(f"on rank {where['rank']}")
    if batched:
        parts.append(f"batch row {where['batch']}")
    line = "first NaN/Inf: " + ", ".join(parts)
    others = [name for name in where.get("tensors", ()) if name != stage]
    if others:
        line += f" ({_are(others)} non-finite there too)"
    if where.get("padding_nonfinite"):
        line += f" ({_are(where['padding_nonfinite'])} non-finite at this row's padding positions)"
    return line


def _are(names: list[str]) -> str:
    return " and ".join(names) + (" is" if len(names) == 1 else " are")


def masked_rows_check(run: Run) -> Check:
    """Query rows of real tokens with no allowed key; rows whose weights (and sink) do not sum to 1."""
    real = run.inputs.real  # (B, T) bool
    empty: list[dict] = []
    off: list[dict] = []
    worst = 0.0
    for rec in run.records:
        stats = rec.stats
        rows_real = real[:, None, -stats.fully_masked.shape[2] :].expand_as(stats.fully_masked)
        e = stats.fully_masked & rows_real
        dev = (stats.weight_sum + stats.sink_weight - 1).abs()
        finite = stats.nonfinite_weights == 0  # rows with NaN/Inf weights are the nan check's finding
        o = (~stats.fully_masked) & rows_real & finite & (dev > WEIGHT_SUM_TOLERANCE)
        if bool(o.any()):
            worst = max(worst, float(torch.nan_to_num(dev[o], nan=float("inf")).max()))
        for kind, found in ((empty, e), (off, o)):
            for b, h, s in found.nonzero().tolist()[:50]:
                kind.append({"layer": rec.layer, "head": h, "position": s, "batch": b})
    where = (empty or off)[0] if empty or off else None
    passed = not empty and not off
    padding_rows = sum(int((rec.stats.fully_masked & ~real[:, None, :]).sum()) for rec in run.records)
    message = (
        "every real query row has keys and weights summing to 1"
        if passed
        else (
            f"{len(empty)} real query row(s) with no allowed key"
            if empty
            else f"{len(off)} row(s) whose weights do not sum to 1 (worst |sum - 1| = {worst:.3g})"
        )
    )
    figures = {
        "fully_masked_rows": empty[:20],
        "bad_weight_sums": off[:20],
        "max_weight_sum_error": json_number(worst),
        "tolerance": WEIGHT_SUM_TOLERANCE,
        "padding_rows_fully_masked": padding_rows,
    }
    return Check("masked_rows", passed, figures, where and {**where, "stage": "weights"}, message)


def full_vs_incremental_check(
    run: Run, tol: Tolerance, step: Step | None = None, mode: str | Mode | None = None
) -> tuple[Check, list[Diff]]:
    """The prompt through the KV cache in the pieces of an incremental `mode` (`attnscope.inspector.
    incremental`: the default's prefill chunks then single tokens, every token, or chunks of given
    sizes) against the parallel forward: in isolation
    per layer (`Run.isolated`: the finding's layer), and free-running end to end (`Run.incremental`:
    every layer on its own hidden states, and the logits), each with its own calibration.

    What decides: the isolated layers (where the engine can isolate them) and the logits (against a
    float32 forward in float16/bfloat16; where none can run, they are shown, not judged, beside
    isolated layers). The free-running layers decide only where nothing else can: in float32
    without isolation, or in half precision with neither isolation nor a float32 forward (then
    against the dtype's constant tolerance, and the report says so)."""
    n, T = run.model.layout.n_layers, run.inputs.shape[1]
    plan = parse_mode(mode).plan(T)
    real = run.inputs.real
    half = run.model.dtype in HALF
    total = (2 if half else 1) * T * n
    with torch.inference_mode():
        free, logits_inc = run.incremental(_part(step, 0, total), plan.pieces)
        end_to_end = run.float32_forward() if tol.calibrated else None
    reference32 = None if isinstance(end_to_end, str) else end_to_end
    kept = LayerBuffers(n)
    free_diffs = [
        kept.keep_fields(
            i,
            compare(
                rec.out,
                par.out,
                None if reference32 is None else reference32[0][i].out,
                tol,
                real[:, -rec.q.shape[2] :],
            ),
        )
        for i, (rec, par) in enumerate(zip(free, run.records, strict=True))
    ]
    logits_diff = compare(
        logits_inc[:, None], run.logits[:, None], None if reference32 is None else reference32[1][:, None], tol, real
    )
    del free, logits_inc, reference32  # the float32 forward's outputs, before the isolated pass
    # In float32, rounding does not accumulate to anything the tolerance sees over a correct model's
    # depth, so the free-running pass localizes as well as isolation, and the isolated pass (as many
    # token steps again) runs only to name the layer of a difference found
    isolated = None
    if half or _first_failing(free_diffs) is not None or logits_diff.first_bad() is not None:
        with torch.inference_mode():
            isolated = run.isolated(_part(step, T * n, 2 * T * n), reference=tol.calibrated, pieces=plan.pieces)
    if step is not None:  # done (the isolated pass, when it ran, took the second half)
        done = 2 * T * n if isolated is not None else total
        step(done, done)
    uncalibrated = tol.calibrated and isinstance(end_to_end, str)
    logits_gate = not uncalibrated or isolated is None
    layers_gate = isolated is None and (not tol.calibrated or uncalibrated)
    end_to_end_calibration = (
        f"none ({end_to_end})"
        if isinstance(end_to_end, str)
        else "float32 forward of the same inputs"
        if end_to_end is not None
        else _constant(run, tol)
    )
    calibration = {"layers": _layer_calibration(run, tol, isolated), "end_to_end": end_to_end_calibration}
    layer_diffs, lse_diffs = _isolated_diffs(isolated, tol, real) if isolated is not None else (free_diffs, [])

    figures = _figures(_merge(layer_diffs), tol)
    figures["incremental"] = plan.as_dict()
    figures["per_layer_max_abs_diff"] = _per_layer(layer_diffs)
    figures["per_layer_lse_max_abs_diff"] = _per_layer(lse_diffs) if lse_diffs else None
    figures["isolated"] = isolated is not None
    ratio = _worst_ratio(layer_diffs + lse_diffs)
    if ratio is not None:  # largest error vs float32 over its limit (over 1 fails), in all and per layer
        figures["worst_error_ratio"] = ratio
        figures["per_layer_error_ratio"] = [_worst_ratio([d, *lse_diffs[i : i + 1]]) for i, d in enumerate(layer_diffs)]
    figures["logits_max_abs_diff"] = json_number(float(logits_diff.max_abs.max()))
    free_fail, logits_fail = _first_failing(free_diffs), logits_diff.first_bad()
    # Beside isolation the free-running layers show where the drift grows but do not decide: each is
    # two trajectories of rounding through every layer below, whose largest deviations from float32
    # vary between prompts by more than the rule's factor (per-head ratios up to 2.6x on deep-random),
    # where the logits (thousands of values a row) do not.
    gates = [
        name
        for name, on in (
            ("isolated layers", isolated is not None),
            ("free-running layers", layers_gate),
            ("logits", logits_gate),
        )
        if on
    ]
    figures["free_running"] = {
        "per_layer_max_abs_diff": _per_layer(free_diffs),
        "per_layer_error_ratio": [_worst_ratio([d]) for d in free_diffs] if free_diffs[0].limit is not None else None,
        "first_layer_over": None if free_fail is None else free_fail[0],
        "logits_max_abs_diff": figures["logits_max_abs_diff"],
        "logits_error_ratio": _worst_ratio([logits_diff]),
        "over_tolerance": free_fail is not None or logits_fail is not None,
    }
    figures["gates"] = gates
    figures["calibration"] = calibration

    failing = _first_failing(layer_diffs) if isolated is not None else None
    lse_failing = _first_failing(lse_diffs)
    if lse_failing is not None and (failing is None or lse_failing[0] < failing[0]):
        failing, stage, diffs_at = lse_failing, "lse", lse_diffs
    else:
        stage, diffs_at = "output", layer_diffs
    where, message = (
        None,
        f"incremental decoding ({plan.describe()}) matches the full forward, "
        + ("layer by layer (isolated) and end to end" if isolated is not None else "layer by layer and end to end"),
    )
    if failing is not None:
        layer, (b, h, s) = failing
        where = {"layer": layer, "head": h, "position": s, "batch": b, "stage": stage, "path": "isolated"}
        message = (
            f"layer {layer}'s incremental attention {stage} differs from its parallel one on the same "
            f"input (head {h}, position {s} {plan.piece_of(s)}; max |Δ| "
            f"{float(diffs_at[layer].max_abs.max()):.3g}{_over(diffs_at[layer], h)}) [{plan.mode}]"
        )
    elif layers_gate and free_fail is not None:
        layer, (b, h, s) = free_fail
        where = {"layer": layer, "head": h, "position": s, "batch": b, "stage": "output", "path": "free_running"}
        message = (
            f"incremental attention output differs from the full forward from layer {layer} on "
            f"(head {h}, position {s} {plan.piece_of(s)}; max |Δ| {float(free_diffs[layer].max_abs.max()):.3g}"
            f"{_over(free_diffs[layer], h)}) [{plan.mode}]"
        )
    elif logits_gate and logits_fail is not None:
        b, _, s = logits_fail
        where = {"layer": None, "head": None, "position": s, "batch": b, "stage": "logits", "path": "free_running"}
        message = (
            f"logits differ at position {s} {plan.piece_of(s)} (max |Δ| {float(logits_diff.max_abs.max()):.3g}"
            f"{_over(logits_diff, 0)}) [{plan.mode}]"
        )
        if isolated is not None:
            message += (
                ", while every layer agrees in isolation: a difference too small to see in one layer "
                "accumulates over depth"
            )
        if free_fail is not None:
            message += f" (the free-running pass is over its limit from layer {free_fail[0]} on)"
    if uncalibrated:
        message += f"; the end-to-end figures are not calibrated: {end_to_end_calibration}"
        if not logits_gate and logits_fail is not None:
            message += " (they exceed the dtype's constant tolerance, which decides nothing beside isolated layers)"
    elif where is None and isolated is None and half:
        message += " (not isolated: the free-running layers are shown, the logits decide)"
    return Check("full_vs_incremental", where is None, figures, where, message), layer_diffs


def _part(step: Step | None, offset: int, total: int) -> Step | None:
    """A step callback for one part of a loop of `total`, reporting from `offset` on."""
    return None if step is None else (lambda done, _total: step(offset + done, total))


def _constant(run: Run, tol: Tolerance) -> str:
    given = "as given (atol/rtol)" if tol.given else f"of {str(run.model.dtype).removeprefix('torch.')}"
    return f"constant tolerance {given}"


def _layer_calibration(run: Run, tol: Tolerance, isolated) -> str:
    if isolated is None and run.model.dtype not in HALF:
        return f"{_constant(run, tol)}; the free-running pass (isolated when it finds a difference)"
    if isolated is None:
        return f"not isolated (the {run.model.engine} engine cannot isolate its layers): the free-running pass"
    if tol.calibrated:
        return "float32 computation of each layer's attention on the same input"
    return _constant(run, tol)


def _isolated_diffs(isolated, tol: Tolerance, real: torch.Tensor) -> tuple[list[Diff], list[Diff]]:
    """Per layer, the incremental path's output and lse against the parallel path's on the same input."""
    kept, kept_lse = LayerBuffers(len(isolated.parallel)), LayerBuffers(len(isolated.parallel))
    refs = isolated.reference or [None] * len(isolated.parallel)
    outs, lses = [], []
    for i, (par, inc, ref) in enumerate(zip(isolated.parallel, isolated.incremental, refs, strict=True)):
        rows = real[:, -par.out.shape[2] :]
        outs.append(kept.keep_fields(i, compare(inc.out, par.out, None if ref is None else ref.out, tol, rows)))
        if inc.lse is not None and par.lse is not None:
            ref_lse = None if ref is None else _as_rows(ref.lse)
            lses.append(kept_lse.keep_fields(i, compare(_as_rows(inc.lse), _as_rows(par.lse), ref_lse, tol, rows)))
    return outs, lses if len(lses) == len(outs) else []


def _as_rows(lse: torch.Tensor) -> torch.Tensor:
    """lse ``[B, H, S]`` as ``[B, H, S, 1]`` for `compare`, -inf (a row with no key) as 0 on both sides."""
    return eager.safe_lse(lse).unsqueeze(-1)


def _per_layer(diffs: list[Diff]) -> list:
    return [json_number(float(d.max_abs.max())) if d.max_abs.numel() else 0.0 for d in diffs]


def _worst_ratio(diffs: list[Diff]) -> float | None:
    """The largest error vs float32 over its limit of calibrated diffs (None when none is)."""
    ratios = [
        (d.error / d.limit).max() for d in diffs if d.error is not None and d.limit is not None and d.limit.numel()
    ]
    if not ratios:
        return None
    ratio = json_number(round(float(torch.stack(ratios).max()), 4))
    return ratio if isinstance(ratio, float) else float("inf")


def _over(d: Diff, head: int) -> str:
    """How far over its calibrated limit a head is, for a message ("" for a constant tolerance)."""
    if d.limit is None or d.error is None:
        return ""
    return (
        f"; error vs float32 {float(d.error[head]):.3g} > limit {float(d.limit[head]):.3g}, "
        f"{RULE_FACTOR:g}x the parallel path's own"
    )


def backend_vs_reference_check(run: Run, tol: Tolerance, step: Step | None = None) -> tuple[Check, list[Diff]]:
    """The backend's output against eager float32 on the same q, k, v, layer by layer. In float16 and
    bfloat16, flash-attention's rule: the backend's error vs float32 at most `RULE_FACTOR` times that
    of the textbook attention in the same dtype (`eager.attend_rounded`) on the same q, k, v."""
    if run.backend == "eager" and run.model.dtype == torch.float32:
        return Check(
            "backend_vs_reference",
            True,
            {"skipped": "the backend is the eager float32 reference"},
            None,
            "skipped: the backend is the eager float32 reference itself",
        ), []
    eager_attend = get_backend("eager")
    diffs, kept = [], LayerBuffers(len(run.records))
    for i, rec in enumerate(run.records):
        features = {
            name: value for name, value in (("softcap", rec.softcap), ("sinks", rec.sinks)) if value is not None
        }  # the layer's own, as the backend ran them
        ref, _ = eager_attend(
            rec.q.float(), rec.k.float(), rec.v.float(), rec.mask, rec.scale, need_lse=False, **features
        )
        rows = run.inputs.real[:, -rec.q.shape[2] :]
        if tol.calibrated and rec.q.dtype in HALF:
            baseline = eager.attend_rounded(
                rec.q, rec.k, rec.v, rec.mask, rec.scale, softcap=rec.softcap, sinks=rec.sinks
            )
            d = compare(rec.out, baseline, ref, tol, rows, delta="reference")
            del baseline
        else:
            d = diff(rec.out, ref, tol.uncalibrated(), rows)
        diffs.append(kept.keep_fields(i, d))
        del ref  # before the next layer's is computed
        if step is not None:
            step(rec.layer + 1, len(run.records))
    figures = _figures(_merge(diffs), tol)
    figures["per_layer_max_abs_diff"] = _per_layer(diffs)
    ratio = _worst_ratio(diffs)
    if ratio is not None:
        figures["worst_error_ratio"] = ratio
        figures["calibration"] = f"the textbook attention in {str(run.model.dtype).removeprefix('torch.')}"
    failing = _first_failing(diffs)
    if failing is None:
        return Check(
            "backend_vs_reference", True, figures, None, f"{run.backend} matches the eager float32 reference"
        ), diffs
    layer, (b, h, s) = failing
    where = {"layer": layer, "head": h, "position": s, "batch": b, "stage": "output"}
    return Check(
        "backend_vs_reference",
        False,
        figures,
        where,
        f"{run.backend} differs from eager at layer {layer}, head {h}, position {s} "
        f"(max |Δ| {float(diffs[layer].max_abs.max()):.3g} in that layer"
        + (
            f"; {RULE_FACTOR:g}x the error of the textbook attention in the same dtype is "
            f"{float(diffs[layer].limit[h]):.3g}"
            if diffs[layer].limit is not None
            else ""
        )
        + ")",
    ), diffs


# on prompts longer than `CAUSALITY_LONG` tokens the cuts fall in two windows of `CAUSALITY_WINDOW`
# positions: three in the last ones, each rerun computing only those through a cache of the positions
# before them (copied from the run's own forward where the engine can), and one in the first ones,
# rerun alone; their six reruns of 256 positions cost what three of the whole prompt do at 512 tokens,
# so up to that the whole prompt is rerun
CAUSALITY_LONG = 512
CAUSALITY_WINDOW = 256


@dataclass(frozen=True)
class CausalitySpan:
    """Positions `start` .. `end` - 1 rerun together (through a cache of those before `start`), and the
    cuts that fall in them."""

    start: int
    end: int
    cuts: tuple[int, ...]


def causality_spans(T: int, cut_points: Sequence[int] | None = None) -> list[CausalitySpan]:
    """Where causality cuts a prompt of `T` tokens and what each rerun computes: given `cut_points`,
    or up to `CAUSALITY_LONG` tokens, the whole prompt with cuts at 1/4, 1/2 and 3/4 of it; past
    that, the first `CAUSALITY_WINDOW` positions cut at their half, and the last ones at 1/4, 1/2 and
    3/4 of them."""
    if cut_points is not None:
        return [CausalitySpan(0, T, tuple(sorted(set(cut_points))))]
    W = T if T <= CAUSALITY_LONG else CAUSALITY_WINDOW
    tail = CausalitySpan(T - W, T, tuple(T - W + p for p in (W // 4, W // 2, (3 * W) // 4) if 0 <= p < W - 1))
    return [tail] if W == T else [CausalitySpan(0, W, (W // 2,)), tail]


def causality_check(run: Run, tol: Tolerance, cut_points: list[int] | None = None, step: Step | None = None) -> Check:
    """Change the tokens after position p; outputs at positions <= p must not change beyond what a
    rerun of the same tokens changes (`causality_tolerance`). Cuts at 1/4, 1/2 and 3/4 of the prompt,
    or, past `CAUSALITY_LONG` tokens, in two windows (`causality_spans`): the last `CAUSALITY_WINDOW`
    positions, rerun alone as a parallel chunk through a cache of the positions before them, and the
    first ones, rerun alone. Each window's changed reruns are compared with a rerun of that window
    with the same tokens (same shapes, so bit for bit where the run is exact)."""
    ids = run.inputs.ids
    T = ids.shape[1]
    vocab = run.model.layout.vocab_size
    spans = causality_spans(T, cut_points)
    cuts = [p for span in spans for p in span.cuts]
    tol, calibration = causality_tolerance(run, tol)
    worst = 0.0
    first: dict[str, Any] | None = None
    done = 0
    for span in spans:
        start, end = span.start, span.end
        # the parallel forward is the baseline of the whole prompt, and of a window where the tolerance
        # is float32's default (which allows the rounding of a window computed alone, as it allows
        # that of full_vs_incremental's chunks); else (bit for bit, calibrated or given tolerances) a
        # rerun of the window with the same tokens, the same shapes as the changed reruns
        own_rerun = (start, end) != (0, T) and (run.exact or tol.calibrated or tol.given)
        with torch.inference_mode():
            prefix = run.prefix_cache(start) if start else None
            if not own_rerun:  # a rerun of the whole prompt: the noise's reference
                original = [rec.out[:, :, start:end] for rec in run.records]
                whole = (start, end) == (0, T)
                reference = [rec.out for rec in run.rerun(ids)] if whole and tol.calibrated and span.cuts else None
            else:  # the window's own rerun; the parallel forward, the noise's reference
                original = [rec.out for rec in run.rerun(ids, start, prefix, end)]
                reference = [rec.out[:, :, start:end] for rec in run.records] if tol.calibrated else None
        for p in span.cuts:
            if step is not None:
                step(done, len(cuts))
            done += 1
            changed = ids.clone()
            changed[:, p + 1 :] = (ids[:, p + 1 :] + 1 + torch.arange(T - p - 1, device=ids.device)) % vocab
            with torch.inference_mode():
                records = run.rerun(changed, start, prefix, end)
            rows = slice(0, p + 1 - start)  # positions start .. p
            diffs = [
                compare(
                    rec.out[:, :, rows],
                    orig[:, :, rows],
                    None if reference is None else reference[i][:, :, rows],
                    tol,
                    run.inputs.real[:, start : p + 1],
                )
                for i, (rec, orig) in enumerate(zip(records, original, strict=True))
            ]
            worst = max(worst, max(float(d.max_abs.max()) for d in diffs))
            failing = _first_failing(diffs)
            if failing is not None and (first is None or failing[0] < first["layer"]):
                layer, (b, h, s) = failing
                first = {"layer": layer, "head": h, "position": start + s, "batch": b, "stage": "output", "cut": p}
        del original, reference, prefix
    if step is not None:
        step(len(cuts), len(cuts))
    # the positions rerun, [first, last] a window; None: the whole prompt
    windows = None if len(spans) == 1 else [[span.start, span.end - 1] for span in spans]
    figures = {
        "cut_points": cuts,
        "windows": windows,
        "max_abs_diff": json_number(worst),
        "tolerance": tol.as_dict(),
        "bit_exact": run.exact,
        "calibration": calibration,
    }
    within = "" if windows is None else "; rerun: positions " + " and ".join(f"{a}–{b}" for a, b in windows)
    if first is None:
        return Check(
            "causality",
            True,
            figures,
            None,
            f"no position <= p changes when later tokens change (p in {cuts}{within})",
        )
    return Check(
        "causality",
        False,
        figures,
        first,
        f"changing tokens after position {first['cut']} changes position {first['position']} "
        f"from layer {first['layer']} on (head {first['head']}): a future-token leak",
    )


def causality_tolerance(run: Run, tol: Tolerance) -> tuple[Tolerance, str]:
    """What the causality check allows, and how that was decided:

    - eager in float32 on a batch-invariant engine: nothing (bit for bit);
    - an explicit --atol/--rtol, or float32: the constant tolerance;
    - float16/bfloat16 on a batch-invariant engine: what a rerun of the same tokens changes, times
      `RULE_FACTOR`, plus the dtype's eps at the head's magnitude (a deterministic backend changes
      nothing);
    - an engine that is not batch invariant (mixture-of-experts layers group tokens per expert, so
      changing later tokens may change an earlier token's rounding, which a rerun of the same tokens
      does not show): the dtype's constant tolerance."""
    if run.exact:
        return EXACT, "bit-exact (eager float32)"
    if not tol.calibrated:
        return tol, _constant(run, tol)
    if run.model.batch_invariant:
        return (
            Tolerance.rule(run.model.dtype),
            "a rerun of the same tokens: changed future tokens may move earlier positions by at most "
            f"{RULE_FACTOR:g}x what it moves them",
        )
    return tol.uncalibrated(), _constant(run, tol) + " (the engine is not batch invariant)"


def _merge(diffs: list[Diff]) -> Diff:
    return Diff(
        torch.stack([d.max_abs for d in diffs]).amax(0),
        torch.stack([d.max_rel for d in diffs]).amax(0),
        torch.zeros(0, dtype=torch.bool),
    )


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


def run_checks(
    run: Run,
    names: Sequence[str] = CHECK_NAMES,
    atol: float | None = None,
    rtol: float | None = None,
    on_check=None,
    progress: Progress | None = None,
    incremental: str | Mode | None = None,
) -> tuple[list[Check], dict[str, list[Diff]]]:
    """Run the named checks on a run. Returns (checks, per-layer diffs by check name).
    `on_check(check)` is called as each one finishes; `progress(done, total, name)` as each loops
    (layers, tokens × layers of full_vs_incremental, perturbations of causality); `incremental` the
    mode of full_vs_incremental (`attnscope.inspector.incremental.parse_mode`; None: the default)."""
    names = parse_checks(names)
    mode = parse_mode(incremental)
    tol = Tolerance.for_dtype(run.model.dtype, atol, rtol)
    checks, diffs = [], {}
    for name in names:
        step = step_of(progress, name)
        if name == "nan":
            checks.append(nan_check(run, step))
        elif name == "masked_rows":
            checks.append(masked_rows_check(run))
        elif name in ("full_vs_incremental", "backend_vs_reference"):
            if name == "full_vs_incremental":
                check, layer_diffs = full_vs_incremental_check(run, tol, step, mode)
            else:
                check, layer_diffs = backend_vs_reference_check(run, tol, step)
            checks.append(check)
            if layer_diffs:  # none from a check that was skipped
                diffs[name] = layer_diffs
        elif name == "causality":
            checks.append(causality_check(run, tol, step=step))
        if on_check is not None:
            on_check(checks[-1])
    return checks, diffs
