"""The llama.cpp engine's capture against llama.cpp's own decode, one token at a time through its KV cache.

Three ways, on the same GGUF file, prompt and number of new tokens, in one process:

  (a) plain: llama.cpp with no eval callback (the decode a user runs);
  (b) watched: the engine's callback installed but recording nothing (it answers the scheduler's
      "ask" for every node, and asks for none): what a decode step without a recorder costs;
  (c) captured: every layer recorded (q, k, v, the scores and probabilities, the output, the block's
      output, copied out in the callback, the lse computed, the records built).

Printed: milliseconds per token of each (the median of `--repeats` runs) and the ratios (b)/(a) and
(c)/(a), all measured in this run.

    python benchmarks/llamacpp_capture.py [--model sample_models/tiny-code-q4/tiny-code-q4.gguf]
        [--prompt-tokens 16] [--new-tokens 64] [--repeats 5] [--dtype float16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed  # noqa: E402

from attnscope.inspector.capture import Capture  # noqa: E402
from attnscope.llamacpp import LlamaCppEngine  # noqa: E402
from attnscope.model.loader import resolve_dtype  # noqa: E402

DEFAULT = Path(__file__).parent.parent / "sample_models" / "tiny-code-q4" / "tiny-code-q4.gguf"


def per_token(engine: LlamaCppEngine, ids: torch.Tensor, new: int, record: bool, repeats: int) -> float:
    """Seconds per token of `new` one-token decodes after a prompt `ids` (prefill not counted)."""
    state = {}

    def prefill():
        state["cache"] = cache = engine.new_cache(1, ids.shape[1] + new)
        engine.forward(ids, cache=cache)

    def steps():
        for t in range(new):
            token = ids[:, t % ids.shape[1] : t % ids.shape[1] + 1]
            engine.forward(token, cache=state["cache"], recorder=Capture(append=False) if record else None)

    def run():
        prefill()
        steps()

    prefill_time = timed(prefill, repeats)
    return (timed(run, repeats) - prefill_time) / new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float16", help="the KV cache's type (llama.cpp's default: float16)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    dtype = resolve_dtype(args.dtype)
    watched = LlamaCppEngine(args.model, dtype, threads=args.threads)
    plain = LlamaCppEngine(args.model, dtype, threads=args.threads)
    plain._callback = plain._lib.llama.ggml_backend_sched_eval_callback()  # a NULL callback: llama.cpp alone
    ids = torch.randint(
        1, watched.layout.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0)
    )

    a = per_token(plain, ids, args.new_tokens, False, args.repeats)
    b = per_token(watched, ids, args.new_tokens, False, args.repeats)
    c = per_token(watched, ids, args.new_tokens, True, args.repeats)
    lay = watched.layout
    print(
        f"{args.model.name}: {lay.model_type}, {lay.n_layers} layers, {lay.n_heads}/{lay.n_kv_heads} heads, "
        f"KV cache {args.dtype}, {args.threads} thread(s); {args.prompt_tokens}-token prompt, "
        f"{args.new_tokens} tokens one at a time"
    )
    print(f"(a) plain llama.cpp      {a * 1e3:8.3f} ms/token")
    print(f"(b) callback, no record  {b * 1e3:8.3f} ms/token   (b)/(a) {b / a:5.2f}x")
    print(f"(c) every layer recorded {c * 1e3:8.3f} ms/token   (c)/(a) {c / a:5.2f}x")


if __name__ == "__main__":
    main()
