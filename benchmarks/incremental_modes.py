"""What the incremental modes of `full_vs_incremental` cost: the default (prefill chunks, then the last
32 tokens one at a time) against the exhaustive mode (every token one at a time), and `causality` on
long prompts (two windows: the first positions, and the last ones through a cache) against reruns
of the whole prompt.

For each model and prompt length (tokens of tiny-code's model card), the wall time of the check on
one run, the two modes (or the two causality variants) alternated, medians of `--repeats`; the
ratios within one run are the figures (absolute times on a shared machine mean little). The load
average is printed with them.

    python benchmarks/incremental_modes.py [--models tiny-code:float32:256,1024,4096 ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import attnscope
from attnscope.inspector import checks
from attnscope.inspector.checks import Tolerance, causality_check, full_vs_incremental_check
from attnscope.samples import sample_models_dir

DEFAULT_MODELS = ["tiny-code:float32:256,1024,4096", "deep-random:bfloat16:128,512"]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def whole_prompt_causality(run, tol):
    """`causality` as it ran before: cuts over the whole prompt, each a rerun of all of it."""
    long = checks.CAUSALITY_LONG
    checks.CAUSALITY_LONG = 1 << 62
    try:
        return causality_check(run, tol)
    finally:
        checks.CAUSALITY_LONG = long


def measure(run, tol, T: int, repeats: int) -> tuple[dict, str]:
    """Median seconds of the check in each mode (and of causality both ways, past CAUSALITY_LONG), and
    the forward calls of each mode ("default/tokens")."""
    times: dict[str, list[float]] = {"tokens": [], "default": [], "whole": [], "window": []}
    calls = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for mode in ("tokens", "default"):
                start = time.perf_counter()
                check, _ = full_vs_incremental_check(run, tol, None, mode)
                times[mode].append(time.perf_counter() - start)
                assert check.passed, check.message
                calls[mode] = check.figures["incremental"]["forward_calls"]
            if T > checks.CAUSALITY_LONG:
                times["whole"].append(seconds(lambda: whole_prompt_causality(run, tol)))
                times["window"].append(seconds(lambda: causality_check(run, tol)))
    return {k: statistics.median(v) if v else None for k, v in times.items()}, f"{calls['default']}/{calls['tokens']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="name:dtype:length,length,...")
    parser.add_argument("--backend", default="sdpa")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = (sample_models_dir() / "tiny-code" / "README.md").read_text() * 8
    print(
        f"backend {args.backend} · torch threads {torch.get_num_threads()} · load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} · medians of {args.repeats}, alternated"
    )
    print(
        f"{'model':<12} {'dtype':<9} {'T':>5} {'tokens (s)':>10} {'default (s)':>11} {'ratio':>6} "
        f"{'calls':>11} {'causality whole (s)':>19} {'window (s)':>10} {'ratio':>6}"
    )
    for spec in args.models:
        name, dtype, lengths = spec.split(":")
        model = attnscope.load_model(name, dtype=dtype)
        tol = Tolerance.for_dtype(model.dtype)
        ids = model.tokenizer.encode(text)
        for T in map(int, lengths.split(",")):
            run = attnscope.Scope(model, backend=args.backend).forward(ids[:T])
            med, calls = measure(run, tol, T, args.repeats)
            causal = (
                f"{med['whole']:>19.2f} {med['window']:>10.2f} {med['window'] / med['whole']:>6.2f}"
                if med["whole"]
                else f"{'(T <= ' + str(checks.CAUSALITY_LONG) + ': whole prompt)':>37}"
            )
            print(
                f"{name:<12} {dtype:<9} {T:>5} {med['tokens']:>10.2f} {med['default']:>11.2f} "
                f"{med['default'] / med['tokens']:>6.3f} {calls:>11} {causal}",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
