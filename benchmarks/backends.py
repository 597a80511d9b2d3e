"""The built-in backends against each other, per feature, on this machine's device: the order that
`--backend auto` takes them in (`attnscope.backends.FASTEST_FIRST`).

For each prompt length and each set of features a model's layers may use (none; logit soft-capping,
Gemma 2; sinks, gpt-oss), every built-in backend that runs here and implements them runs one
layer's attention (B=1, Hq=16, Hkv=4, D=64, causal, float32 on a CPU, bfloat16 on a GPU), its output
checked against eager's first; the table prints each one's median time as a ratio to the fastest of
the row, measured in the same run, interleaved (A B C A B C ...), so the machine's load falls on all.

    python benchmarks/backends.py [--lengths 128 512 2048] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from attnscope.backends import FASTEST_FIRST, get_backend, supports
from attnscope.errors import BackendUnavailable
from attnscope.masks import Causal

B, HQ, HKV, D = 1, 16, 4, 64
FEATURES = ("none", "softcap", "sinks")


def feature_kwargs(feature: str, device: str) -> dict:
    """The keyword a layer passes for `feature` (Gemma 2's cap 30, random sink logits)."""
    if feature == "softcap":
        return {"softcap": 30.0}
    return {"sinks": torch.randn(HQ, device=device)} if feature == "sinks" else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    names = [n for n in ("eager", "sdpa", "flex") if _available(n)]
    torch.manual_seed(0)
    print(f"device {device} · {dtype} · B={B} Hq={HQ} Hkv={HKV} D={D} · threads {torch.get_num_threads()}")
    print(f"auto's order here: {' > '.join(FASTEST_FIRST.get(device, FASTEST_FIRST['cpu']))}")
    print(f"{'T':>5} {'features':<8} " + " ".join(f"{n:>12}" for n in names))
    for T in args.lengths:
        q = torch.randn(B, HQ, T, D, device=device, dtype=dtype)
        k, v = (torch.randn(B, HKV, T, D, device=device, dtype=dtype) for _ in range(2))
        for feature in FEATURES:
            kwargs = feature_kwargs(feature, device)
            runs = {n: get_backend(n) for n in names if all(supports(get_backend(n), f) for f in kwargs)}
            want = get_backend("eager")(q, k, v, Causal(), D**-0.5, **kwargs)[0].float()
            for name, attend in runs.items():  # correct first, and warmed up (flex compiles on a GPU)
                got = attend(q, k, v, Causal(), D**-0.5, **kwargs)[0].float()
                assert torch.allclose(got, want, atol=2e-2 if dtype != torch.float32 else 1e-4), name
            times: dict[str, list[float]] = {n: [] for n in runs}
            for _ in range(args.repeats):
                for name, attend in runs.items():
                    times[name].append(_time(attend, q, k, v, kwargs, device))
            medians = {n: statistics.median(t) for n, t in times.items()}
            best = min(medians.values())
            cells = [f"{medians[n] / best:>11.2f}x" if n in medians else f"{'-':>12}" for n in names]
            print(f"{T:>5} {feature:<8} " + " ".join(cells) + f"   (fastest {best * 1e3:.2f} ms)")


def _available(name: str) -> bool:
    try:
        get_backend(name)
    except BackendUnavailable:
        return False
    return True


def _time(attend, q, k, v, kwargs, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attend(q, k, v, Causal(), D**-0.5, **kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
