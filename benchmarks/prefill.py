"""Full parallel forward vs token-by-token incremental decoding through the KV cache.

Prints, for each prompt length T, the wall time of one parallel forward over T tokens, of T
single-token forwards that fill the KV cache, and of the same T tokens taken through the cache
layer by layer (`Transformer.forward_token_by_token`, what the `full_vs_incremental` check runs),
with the ratios incremental / full and layer by layer / incremental, all measured in this run
(absolute times on a shared machine mean little; the ratios are the figures). All paths run the
same model, backend and weights; logits are checked before anything is timed (full and
incremental agree, layer by layer equals incremental up to the rounding of its head, run once over
every position).

    python benchmarks/prefill.py [--model tiny-code] [--backend sdpa] [--lengths 128 512 2048]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import timed

import attnscope
from attnscope.backends import get_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-code")
    parser.add_argument("--backend", default="sdpa")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = attnscope.load_model(args.model, device=args.device)
    attend = get_backend(args.backend)
    net = model.net
    gen = torch.Generator().manual_seed(0)
    print(
        f"model {model.name} · backend {args.backend} · device {args.device} · torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'T':>6} {'full (s)':>10} {'incremental (s)':>16} {'incremental / full':>19} "
        f"{'layer by layer (s)':>19} {'layer by layer / incremental':>29}"
    )
    with torch.inference_mode():
        for T in args.lengths:
            ids = torch.randint(0, model.config.vocab_size, (1, T), generator=gen, device=args.device)

            def full(ids=ids, T=T):
                return net(ids, net.new_cache(1, T), attend=attend)

            def incremental(ids=ids, T=T):
                cache = net.new_cache(1, T)
                return torch.cat([net(ids[:, i : i + 1], cache, attend=attend) for i in range(T)], dim=1)

            def layer_by_layer(ids=ids, T=T):
                return net.forward_token_by_token(ids, net.new_cache(1, T), attend=attend)

            diff = (full() - incremental()).abs().max().item()
            assert diff < 1e-4, f"full and incremental logits differ by {diff}"
            torch.testing.assert_close(
                layer_by_layer(), incremental(), msg="layer by layer is not T one-token forwards"
            )
            full()  # warm-up
            t_full = timed(full, args.repeats)
            pairs = [
                (timed(incremental, 1), timed(layer_by_layer, 1))  # alternated: both see the same load
                for _ in range(max(1, args.repeats if T <= 512 else 1))
            ]
            t_inc, t_layers = (statistics.median(times) for times in zip(*pairs, strict=True))
            print(
                f"{T:>6} {t_full:>10.4f} {t_inc:>16.3f} {t_inc / t_full:>18.1f}× {t_layers:>19.3f} "
                f"{t_layers / t_inc:>28.2f}×"
            )


if __name__ == "__main__":
    main()
