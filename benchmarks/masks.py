"""Dense mask construction: a nested Python loop (the baseline) vs the vectorized `dense()` vs a
cache hit, for `causal & sliding_window(256)`, measured in one run and printed as ratios.

The loop evaluates the same predicate one (query, key) pair at a time, as hand-written mask code
often does. For the largest sizes it is timed on every 16th query row and scaled up (marked "est.").

    python benchmarks/masks.py
"""

from __future__ import annotations

import torch
from timing import timed

from attnscope import masks

SPEC = masks.causal() & masks.sliding_window(256)


def loop_dense(q_len: int, k_len: int, row_step: int = 1) -> torch.Tensor:
    past = k_len - q_len
    out = torch.zeros(q_len, k_len, dtype=torch.bool)
    rows = []
    for i in range(0, q_len, row_step):
        q = past + i
        rows.append([(kv <= q) and (kv > q - 256) for kv in range(k_len)])
    out[::row_step] = torch.tensor(rows)
    return out


def main() -> None:
    print(f"spec: {SPEC!r}   torch threads {torch.get_num_threads()}")
    print(
        f"{'Sq':>5} {'past':>5} {'loop (ms)':>12} {'dense (ms)':>11} {'hit (µs)':>9} {'loop/dense':>11} "
        f"{'loop/hit':>10}"
    )
    for past in (0, 512):
        for n in (64, 128, 512, 1024, 4096):
            k_len = n + past
            step = 16 if n * k_len > 2_000_000 else 1
            t_loop = timed(lambda: loop_dense(n, k_len, step), 1) * step  # noqa: B023
            ref = loop_dense(n, k_len, step)
            assert torch.equal(SPEC.dense(n, k_len)[0, 0][::step], ref[::step])

            def miss():
                masks.cache_clear()
                return SPEC.dense(n, k_len)  # noqa: B023

            t_dense = timed(miss)
            SPEC.dense(n, k_len)
            t_hit = timed(lambda: SPEC.dense(n, k_len), 50)  # noqa: B023
            est = " est." if step > 1 else ""
            print(
                f"{n:>5} {past:>5} {t_loop * 1e3:>12.1f} {t_dense * 1e3:>11.2f} {t_hit * 1e6:>9.1f} "
                f"{t_loop / t_dense:>10.0f}× {t_loop / t_hit:>9.0f}×{est}"
            )


if __name__ == "__main__":
    main()
