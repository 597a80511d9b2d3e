"""Compile every kernel variant for a CUDA target without a GPU (Triton front end, PTX, ptxas).

The interpreter runs the kernels' logic on CPU but skips what only the GPU compiler checks (layouts,
shared-memory limits, tl.dot shape rules). This compiles `_attn_fwd` (per dtype, head dim and mask
variant, with the block sizes the wrapper would pick), `_attn_combine` and the `attention_probs`
kernels for a target, and prints each variant's shared memory. Run without TRITON_INTERPRET:

    python -m attnscope.kernels.compile_check [--arch 90] [--dims 64 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import flash, probs

POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
PRECISION = {torch.float32: "ieee"}
SHARED_MEMORY_LIMIT = 232448  # bytes per block on sm_90


def _compile(fn, pointers: dict[str, str], constexprs: dict, target: GPUTarget, warps: int, stages: int) -> int:
    """Shared memory (bytes) of `fn` compiled for `target`; scalars are i32 unless named here."""
    signature = {}
    for name in fn.arg_names:
        if name in pointers:
            signature[name] = pointers[name]
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "fp32" if name in ("qk_scale", "scale") else "i32"
    kernel = triton.compile(
        ASTSource(fn, signature, constexprs), target=target, options={"num_warps": warps, "num_stages": stages}
    )
    return kernel.metadata.shared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 80, 128, 256])
    args = parser.parse_args()
    if flash.INTERPRETING:
        print("TRITON_INTERPRET is set: unset it to compile for a GPU")
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    start, worst = time.perf_counter(), 0
    for dtype, ptr in POINTER.items():
        for D in args.dims:
            # prefill-sized blocks for three mask variants, decode-sized ones (4 rows: GQA group) split
            for causal, window, ragged, split, rows in [
                (True, False, False, False, 1 << 16),
                (True, True, True, True, 1 << 16),
                (False, False, True, False, 1 << 16),
                (True, False, False, True, 4),
            ]:
                bm, bn, warps, stages = flash._blocks(D, dtype, rows, None, None)
                pointers = {"Q": ptr, "K": ptr, "V": ptr, "OUT": "*fp32" if split else ptr, "LSE": "*fp32"}
                block_d = max(16, triton.next_power_of_2(D))
                constexprs = dict(
                    GROUP=4,
                    HEAD_DIM=D,
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                    BLOCK_D=block_d,
                    IS_CAUSAL=causal,
                    HAS_WINDOW=window,
                    PER_BATCH_OFFSET=ragged,
                    SPLIT=split,
                    DOT_F32=False,
                    DOT_PRECISION=PRECISION.get(dtype),
                )
                if ragged:
                    pointers["Q_OFFSETS"] = "*i32"
                else:
                    constexprs["Q_OFFSETS"] = None
                shared = _compile(flash._attn_fwd, pointers, constexprs, target, warps, stages)
                worst = max(worst, shared)
                print(
                    f"_attn_fwd {str(dtype):15} D={D:<3} causal={causal:d} window={window:d} ragged={ragged:d} "
                    f"split={split:d} blocks {bm}x{bn} warps {warps} stages {stages}: {shared} B shared"
                )
        pointers = {"Q": ptr, "K": ptr, "LSE": "*fp32", "P": "*fp32", "ROW_EDGES": "*i32", "COL_EDGES": "*i32"}
        bm, bn = probs._blocks(128, dtype, None, None)
        common = dict(
            HEAD_DIM=128,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_D=128,
            IS_CAUSAL=True,
            HAS_WINDOW=True,
            DOT_F32=False,
            DOT_PRECISION=PRECISION.get(dtype),
        )
        for fn, extra in (
            (probs._attn_probs_region, {}),
            (probs._attn_probs_pooled, {"REDUCE_MAX": True}),
            (probs._attn_probs_pooled, {"REDUCE_MAX": False}),
        ):
            shared = _compile(fn, pointers, {**common, **extra}, target, 4, 2)
            print(f"{fn.__name__} {str(dtype):15} {extra or ''}: {shared} B shared")
    for rows in (1, 16):
        pointers = {"OUT_PART": "*fp32", "LSE_PART": "*fp32", "OUT": "*bf16", "LSE": "*fp32"}
        shared = _compile(
            flash._attn_combine, pointers, dict(HEAD_DIM=128, BLOCK_R=rows, BLOCK_S=64, BLOCK_D=128), target, 4, 1
        )
        print(f"_attn_combine rows/program {rows}: {shared} B shared")
    print(
        f"all compiled for sm_{args.arch} in {time.perf_counter() - start:.0f} s; largest shared memory {worst} B"
        + (f" (over the {SHARED_MEMORY_LIMIT} B of sm_90!)" if worst > SHARED_MEMORY_LIMIT else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
