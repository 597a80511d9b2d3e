"""Memory and time of a capture through the hf engine against a plain forward of the same model.

A 135M-class Llama (hidden 576, 30 layers, 9 query / 3 kv heads, head_dim 64, vocab 49152; random
weights) built with transformers, in a fresh process per scenario (peak RSS only grows):

  (a) plain: the model's own forward of T tokens into a KV cache (what generate's prefill does),
      sdpa attention, nothing else kept;
  (b) capture: `Scope(from_transformers(model), backend="sdpa").run(...)` of the same tokens with the
      checks that need no second forward (nan, masked_rows, backend_vs_reference) and every layer's
      record kept (q, k, v, output, lse; k and v are the cache's own tensors).

Printed: peak RSS above the built model (what the run itself needs), the whole process's peak, wall
time, and the ratio of (b) to (a) in both, all measured in this run.

    python benchmarks/hf_engine.py [--lengths 512 2048] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SCENARIO = r"""
import json, resource, sys, time, torch, transformers
kind, T, dtype = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3])
torch.set_num_threads(2)
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
config = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                  max_position_embeddings=8192, tie_word_embeddings=True,
                                  attn_implementation="sdpa")
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(config).to(dtype).eval()
ids = torch.randint(0, 49152, (1, T), generator=torch.Generator().manual_seed(0))
import attnscope
base = rss_mb(); start = time.perf_counter()
if kind == "plain":
    with torch.inference_mode():
        model(ids, cache=transformers.DynamicCache(), use_cache=True)
else:
    result = attnscope.Scope(attnscope.from_transformers(model), backend="sdpa").run(
        ids[0].tolist(), checks="nan,masked_rows,backend_vs_reference", max_new_tokens=0)
    result.head_stats()
    assert result.passed, [c.message for c in result.checks]
wall = time.perf_counter() - start
print(json.dumps({"base_mb": base, "peak_mb": rss_mb(), "wall_s": wall}))
"""


def scenario(kind: str, length: int, dtype: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO, kind, str(length), dtype], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    print(f"{'T':>6} {'scenario':>9} {'run MB':>8} {'peak MB':>8} {'wall s':>7}   capture / plain")
    for length in args.lengths:
        plain, capture = scenario("plain", length, args.dtype), scenario("capture", length, args.dtype)
        for kind, row in (("plain", plain), ("capture", capture)):
            print(
                f"{length:>6} {kind:>9} {row['peak_mb'] - row['base_mb']:>8.0f} {row['peak_mb']:>8.0f} "
                f"{row['wall_s']:>7.2f}"
            )
        print(
            f"{'':>6} {'ratio':>9} {'':>8} {capture['peak_mb'] / plain['peak_mb']:>8.2f} "
            f"{capture['wall_s'] / plain['wall_s']:>7.2f}   (whole-process peak, wall)"
        )


if __name__ == "__main__":
    main()
