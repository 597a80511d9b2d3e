"""What the calibrated half-precision checks cost, against the uncalibrated checks of before.

For each dtype (bfloat16, float16), on one prompt of T tokens (default: 512 tokens of tiny-code's
model card, through the 24-layer `deep-random` sample), the wall time of each comparing check:

- ``full_vs_incremental``: before, the free-running token-by-token pass and its constant-tolerance
  diffs (`Run.incremental`, what the check ran until now); now, the same plus the isolated pass
  (`Run.isolated`: every layer a token at a time on the parallel pass's own input, and in float32)
  and the float32 forward that calibrates the end-to-end figures;
- ``backend_vs_reference``: before, the eager float32 reference per layer; now, also the textbook
  attention in the dtype (`eager.attend_rounded`), the rule's baseline;
- ``causality``: before, three perturbed reruns; now, also a rerun of the same tokens (the noise).

Medians of `--repeats` runs, before and now alternated; the ratios now / before are the figures
(absolute times on a shared machine mean little).

    python benchmarks/half_checks.py [--tokens 512] [--backend sdpa] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

import attnscope
from attnscope.inspector import checks
from attnscope.inspector.checks import DEFAULT_TOLERANCES, Tolerance, diff
from attnscope.samples import sample_models_dir


def before_full_vs_incremental(run, tol: Tolerance) -> None:
    """The check as it ran before: the free-running pass, diffs per layer and of the logits."""
    records, logits = run.incremental()
    real = run.inputs.real
    for rec, par in zip(records, run.records, strict=True):
        diff(rec.out, par.out, tol, real)
    diff(logits[:, None], run.logits[:, None], tol, real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep-random")
    parser.add_argument("--backend", default="sdpa")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = (sample_models_dir() / "tiny-code" / "README.md").read_text()
    print(
        f"model {args.model} · backend {args.backend} · {args.tokens} tokens · torch threads "
        f"{torch.get_num_threads()} · medians of {args.repeats}, before and now alternated"
    )
    print(f"{'dtype':<9} {'check':<21} {'before (s)':>10} {'now (s)':>8} {'now / before':>12}")
    for dtype_name in ("bfloat16", "float16"):
        model = attnscope.load_model(args.model, dtype=dtype_name)
        ids = model.tokenizer.encode(text)[: args.tokens]
        scope = attnscope.Scope(model, backend=args.backend)
        run = scope.forward(ids)
        dtype = model.dtype
        calibrated = Tolerance.for_dtype(dtype)
        constant = Tolerance.for_dtype(dtype, *DEFAULT_TOLERANCES[dtype])  # as given: never calibrated
        pairs = {
            "full_vs_incremental": (
                partial(before_full_vs_incremental, run, constant),
                partial(checks.full_vs_incremental_check, run, calibrated),
            ),
            "backend_vs_reference": (
                partial(checks.backend_vs_reference_check, run, constant),
                partial(checks.backend_vs_reference_check, run, calibrated),
            ),
            "causality": (
                partial(checks.causality_check, run, constant),
                partial(checks.causality_check, run, calibrated),
            ),
        }
        totals = [0.0, 0.0]
        for name, (before, now) in pairs.items():
            times: tuple[list[float], list[float]] = ([], [])
            for _ in range(args.repeats):
                for i, fn in enumerate((before, now)):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        fn()
                    times[i].append(time.perf_counter() - start)
            b, n = statistics.median(times[0]), statistics.median(times[1])
            totals[0] += b
            totals[1] += n
            print(f"{dtype_name:<9} {name:<21} {b:>10.2f} {n:>8.2f} {n / b:>11.2f}x")
        print(f"{dtype_name:<9} {'the three':<21} {totals[0]:>10.2f} {totals[1]:>8.2f} {totals[1] / totals[0]:>11.2f}x")


if __name__ == "__main__":
    main()
