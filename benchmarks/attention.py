"""Triton attention kernels vs torch SDPA (flash) and FlexAttention, on one CUDA GPU, in one run.

- prefill: B=1, Hq=32, Hkv=8, D=128, causal, bfloat16, S in {1k, 4k, 16k}: time, TFLOP/s and the
  fraction of the GPU's dense bfloat16 peak (causal FLOPs = 2 matmuls x 2 x S^2 x D x Hq / 2);
- decode: one query against a KV cache of 4k / 32k / 128k keys: time, memory bandwidth (bytes of
  K and V read) and the fraction of the GPU's peak bandwidth; the Triton kernel splits the keys
  over programs (split-KV) so one sequence fills the GPU;
- the causal / non-causal time ratio at 16k (ideal: 0.5, fully-masked tiles skipped).

Outputs are checked against SDPA before anything is timed. Times are medians of
`triton.testing.do_bench` (CUDA events, L2 flushed). Peaks are looked up from the device name
(override with --peak-tflops / --peak-gbps). Without CUDA it says so and exits 0.

    python benchmarks/attention.py [--prefill 1024 4096 16384] [--decode 4096 32768 131072]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

B, HQ, HKV, D = 1, 32, 8, 128
DTYPE = torch.bfloat16

# dense bfloat16 TFLOP/s (no sparsity) and memory GB/s of common data-center GPUs
PEAKS = {
    "H200": (989.4, 4800.0),
    "H100 NVL": (835.0, 3900.0),
    "H100 PCIe": (756.0, 2000.0),
    "H100": (989.4, 3350.0),
    "GH200": (989.4, 4000.0),
    "A100-SXM4-80GB": (312.0, 2039.0),
    "A100-SXM4-40GB": (312.0, 1555.0),
    "A100 80GB PCIe": (312.0, 1935.0),
    "A100": (312.0, 1555.0),
    "L40S": (362.0, 864.0),
    "L4": (121.0, 300.0),
}


def peaks(name: str, tflops: float | None, gbps: float | None) -> tuple[float | None, float | None]:
    for key, (t, g) in PEAKS.items():  # most specific names first
        if key in name:
            return tflops or t, gbps or g
    return tflops, gbps


def flex_attention_fn():
    """(compiled flex_attention, create_block_mask) or None where FlexAttention is unavailable."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def sdpa_flash(q, k, v, causal: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def sdpa_any(q, k, v, causal: bool):
    """SDPA with whatever kernel torch picks (flash may refuse a shape, e.g. GQA on older torch)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def bench(impls: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float | None]:
    """Median milliseconds of each implementation; None for one that fails on this shape."""
    import triton.testing

    times = {}
    for name, fn in impls.items():
        try:
            fn()
            torch.cuda.synchronize()
            times[name] = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        except Exception as err:  # an implementation that cannot run a shape is reported, not fatal
            print(f"    ({name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:100]})")
            times[name] = None
    return times


def implementations(q, k, v, causal: bool, flex) -> dict[str, Callable[[], torch.Tensor]]:
    from attnscope.kernels import attention

    impls = {"triton": lambda: attention(q, k, v, causal=causal)}
    try:
        sdpa_flash(q[:, :, :1], k[:, :, :16], v[:, :, :16], False)
        impls["sdpa-flash"] = lambda: sdpa_flash(q, k, v, causal)
    except RuntimeError:
        impls["sdpa"] = lambda: sdpa_any(q, k, v, causal)
    if flex is not None:
        flex_fn, create_block_mask = flex
        Sq, Sk = q.shape[2], k.shape[2]
        mask = None
        if causal:
            past = Sk - Sq
            mask = create_block_mask(
                lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + past, None, None, Sq, Sk, device=q.device
            )
        impls["flex"] = lambda: flex_fn(q, k, v, block_mask=mask, enable_gqa=True)
    return impls


def check(impls: dict[str, Callable[[], torch.Tensor]]) -> str:
    ref = impls.get("sdpa-flash") or impls.get("sdpa")
    try:
        diff = (impls["triton"]().float() - ref().float()).abs().max().item()
    except Exception as err:
        return f"not compared ({type(err).__name__})"
    return f"max |triton - sdpa| = {diff:.1e}"


def row(label: str, times: dict[str, float | None], figure: Callable[[float], str]) -> None:
    cells = []
    for name, ms in times.items():
        cells.append(f"{name} {'failed':>24}" if ms is None else f"{name} {ms:8.3f} ms {figure(ms)}")
    print(f"  {label:>6}  " + "  |  ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--decode", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bfloat16 peak of this GPU")
    parser.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth peak of this GPU")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (it compiles for a while)")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU and none is available: nothing measured")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1 is set: the kernels would run in the interpreter; unset it to benchmark")
        return 2
    name = torch.cuda.get_device_name()
    peak_tflops, peak_gbps = peaks(name, args.peak_tflops, args.peak_gbps)
    flex = None if args.no_flex else flex_attention_fn()
    print(
        f"{name} · torch {torch.__version__} · bfloat16 · B={B} Hq={HQ} Hkv={HKV} D={D} · "
        f"peaks {peak_tflops or '?'} TFLOP/s, {peak_gbps or '?'} GB/s · FlexAttention "
        f"{'on' if flex else 'off'}"
    )
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", dtype=DTYPE, generator=gen)

    print("\nprefill, causal: time, TFLOP/s, fraction of peak")
    causal_ms: dict[str, float | None] = {}
    full_ms: dict[str, float | None] = {}
    for S in args.prefill:
        q, k, v = randn(B, HQ, S, D), randn(B, HKV, S, D), randn(B, HKV, S, D)
        impls = implementations(q, k, v, True, flex)
        print(f"  S={S}: {check(impls)}")
        flops = 4 * B * HQ * S * S * D / 2

        def figure(ms, flops=flops):
            tflops = flops / ms / 1e9
            frac = f" ({tflops / peak_tflops:5.1%})" if peak_tflops else ""
            return f"{tflops:6.1f} TFLOP/s{frac}"

        times = bench(impls)
        row(f"{S // 1024}k", times, figure)
        if S == max(args.prefill):
            causal_ms, full_ms = times, bench(implementations(q, k, v, False, flex))
        del q, k, v

    print(f"\ncausal / non-causal time at S={max(args.prefill, default=0)} (ideal 0.50: masked tiles skipped)")
    print(
        "  "
        + "  |  ".join(
            f"{n} {causal_ms[n] / full_ms[n]:.2f}" if causal_ms.get(n) and full_ms.get(n) else f"{n} n/a"
            for n in causal_ms
        )
    )

    print("\ndecode, one query vs a KV cache: time, bandwidth (K and V bytes read), fraction of peak")
    for Sk in args.decode:
        q, k, v = randn(B, HQ, 1, D), randn(B, HKV, Sk, D), randn(B, HKV, Sk, D)
        impls = implementations(q, k, v, False, flex)  # one query at the end sees every key
        print(f"  Sk={Sk}: {check(impls)}")
        nbytes = 2 * k.numel() * k.element_size()

        def figure(ms, nbytes=nbytes):
            gbps = nbytes / ms / 1e6
            frac = f" ({gbps / peak_gbps:5.1%})" if peak_gbps else ""
            return f"{gbps:7.0f} GB/s{frac}"

        row(f"{Sk // 1024}k", bench(impls), figure)
        del q, k, v
    return 0


if __name__ == "__main__":
    sys.exit(main())
