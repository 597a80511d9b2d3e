"""How long the TUI takes to show another head: drives the app headless (Textual's Pilot) on a
1024-token prompt with the default model, selects heads one after another and prints the median
time from the selection to the rendered heatmap. Goal: <= 50 ms.

    python benchmarks/tui.py [--model tiny-code] [--tokens 1024] [--size 160x48]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from attnscope.tui.app import AttnScopeApp
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import Navigator


async def measure(model: str, tokens: int, size: tuple[int, int], repeats: int) -> list[float]:
    ids = [(i * 37) % 900 + 10 for i in range(tokens)]
    app = AttnScopeApp(model=model, prompt=ids, device="cpu", max_new_tokens=0)
    times = []
    async with app.run_test(size=size) as pilot:
        while app.result is None or app.workers:
            await pilot.pause(0.1)
        view = app.query_one(HeatmapView)
        nav = app.query_one(Navigator)
        n_layers, n_heads = app.result.n_layers, app.result.n_heads
        for k in range(repeats):
            layer, head = (k // n_heads) % n_layers, k % n_heads
            start = time.perf_counter()
            nav.select_head(layer, head)  # the navigator's cursor moves to the head ...
            view.show(app.result, layer, head)  # ... and the view switches to it
            view.render_line(0)  # draws the map: pooled tile by tile, rendered to strips
            await pilot.pause()  # until the frame is on the screen
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-code")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--size", default="160x48")
    parser.add_argument("--repeats", type=int, default=32)
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    times = asyncio.run(measure(args.model, args.tokens, size, args.repeats))
    print(f"model {args.model} · {args.tokens} tokens · terminal {args.size} · {len(times)} head switches")
    print(f"select a head → heatmap rendered: median {statistics.median(times) * 1e3:.1f} ms, "
          f"p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
