"""Full parallel forward vs token-by-token incremental decoding through the KV cache.

Prints, for each prompt length T, the wall time of one parallel forward over T tokens and of T
single-token forwards that fill the KV cache, and their ratio, all measured in this run (absolute
times on a shared machine mean little; the ratio is the figure). Both paths run the same model,
backend and weights; logits are checked to agree before anything is timed.

    python benchmarks/prefill.py [--model tiny-code] [--backend sdpa] [--lengths 128 512 2048]
"""

from __future__ import annotations

import argparse

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
    print(f"model {model.name} · backend {args.backend} · device {args.device} · "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'T':>6} {'full (s)':>10} {'incremental (s)':>16} {'incremental / full':>19}")
    with torch.inference_mode():
        for T in args.lengths:
            ids = torch.randint(0, model.config.vocab_size, (1, T), generator=gen, device=args.device)

            def full(ids=ids, T=T):
                return net(ids, net.new_cache(1, T), attend=attend)

            def incremental(ids=ids, T=T):
                cache = net.new_cache(1, T)
                return torch.cat([net(ids[:, i:i + 1], cache, attend=attend) for i in range(T)], dim=1)

            diff = (full() - incremental()).abs().max().item()
            assert diff < 1e-4, f"full and incremental logits differ by {diff}"
            full(), incremental()  # warm-up
            t_full = timed(full, args.repeats)
            t_inc = timed(incremental, max(1, args.repeats if T <= 512 else 1))
            print(f"{T:>6} {t_full:>10.4f} {t_inc:>16.3f} {t_inc / t_full:>18.1f}×")


if __name__ == "__main__":
    main()
