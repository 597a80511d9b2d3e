"""Memory and time of attnscope's capture against a plain forward and HF `output_attentions=True`.

For each prompt length T, in a fresh process per scenario (peak RSS only grows within a process):

  (a) plain: one parallel forward of the model (sdpa backend), nothing kept;
  (b) capture: `Scope.run` with every layer's record and every check's data (row statistics,
      backend_vs_reference, masked_rows, nan; full_vs_incremental and causality with --all-checks);
  (c) hf: HF transformers `LlamaForCausalLM` (eager attention) on the same weights with
      `output_attentions=True`, which returns [layers, heads, T, T] probabilities;
  (d) heatmap: time to produce one 64×128 max-pooled map of one head from the capture of (b).

Printed: peak RSS above the loaded model (the memory the run itself needs), absolute peak RSS, wall
time, and the ratios (b)/(a) and (c)/(b), all measured in this run.

    python benchmarks/capture.py [--model tiny-code] [--lengths 512 2048 4096] [--all-checks]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SCENARIO = r"""
import json, resource, sys, time, torch
import attnscope
from attnscope.backends import get_backend
from attnscope.model.loader import resolve_model_path
kind, model_name, T, all_checks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ids = torch.randint(1, 1000, (1, T), generator=torch.Generator().manual_seed(0))
extra = {}
if kind == "hf":
    from transformers import LlamaForCausalLM
    net = LlamaForCausalLM.from_pretrained(str(resolve_model_path(model_name)), dtype=torch.float32,
                                           attn_implementation="eager").eval()
    base = rss_mb(); start = time.perf_counter()
    with torch.inference_mode():
        out = net(ids, output_attentions=True)
    extra["attention_bytes"] = sum(a.numel() * a.element_size() for a in out.attentions)
else:
    model = attnscope.load_model(model_name)
    base = rss_mb(); start = time.perf_counter()
    if kind == "plain":
        with torch.inference_mode():
            model.net(ids, attend=get_backend("sdpa"))
    else:
        checks = "all" if all_checks else ("nan", "masked_rows", "backend_vs_reference")
        result = attnscope.Scope(model, backend="sdpa").run(ids[0].tolist(), checks=checks)
        result.head_stats()
        extra["passed"] = result.passed
        t0 = time.perf_counter()
        result.attention_pooled(1, 3, height=64, width=128, reduce="max")
        extra["heatmap_s"] = time.perf_counter() - t0
wall = time.perf_counter() - start
print(json.dumps({"base_mb": base, "peak_mb": rss_mb(), "wall_s": wall, **extra}))
"""


def scenario(kind: str, model: str, T: int, all_checks: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, kind, model, str(T), "1" if all_checks else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-code")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--all-checks", action="store_true", help="also full_vs_incremental and causality")
    args = parser.parse_args()
    print(f"model {args.model} · float32 · cpu · peak RSS in MB (above the loaded model / absolute)")
    print(
        f"{'T':>5} {'(a) plain':>16} {'(b) capture':>16} {'(c) HF attn':>16} {'b/a mem':>8} {'c/b mem':>8} "
        f"{'b/a time':>9} {'(d) heatmap':>12}"
    )
    for T in args.lengths:
        a, b, c = (scenario(kind, args.model, T, args.all_checks) for kind in ("plain", "capture", "hf"))
        inc = {k: max(1.0, r["peak_mb"] - r["base_mb"]) for k, r in (("a", a), ("b", b), ("c", c))}

        def cell(r, key, inc=inc):
            return f"{inc[key]:.0f} / {r['peak_mb']:.0f}"

        print(
            f"{T:>5} {cell(a, 'a'):>16} {cell(b, 'b'):>16} {cell(c, 'c'):>16} "
            f"{b['peak_mb'] / a['peak_mb']:>7.2f}× {c['peak_mb'] / b['peak_mb']:>7.2f}× "
            f"{b['wall_s'] / a['wall_s']:>8.1f}× {b['heatmap_s'] * 1e3:>9.1f} ms"
        )
        print(
            f"      increments: b/a {inc['b'] / inc['a']:.2f}×, c/b {inc['c'] / inc['b']:.1f}×; "
            f"HF attentions alone: {c['attention_bytes'] / 2**20:.0f} MB"
        )


if __name__ == "__main__":
    main()
