"""How long the TUI takes to show another head: drives the app headless (Textual's Pilot) on a
1024-token prompt with the default model, presses ↓ in the navigator and times each key press to the
first frame that shows the new head's heatmap. Goal: median <= 50 ms.

What is timed is what a person waits for: the key event, the navigator's highlight, the heatmap drawn
for the new head and the screen update, including turning that update into the escape sequences a
terminal would be sent (the headless driver skips that step, so the script does it). The Pilot's own
idle waits between key presses are not counted: each time runs from the press to the frame.

    python benchmarks/tui.py [--model tiny-code] [--tokens 1024] [--size 160x48] [--presses 48]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from textual._compositor import CompositorUpdate

from attnscope.tui.app import AttnScopeApp
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import Navigator


async def measure(model: str, tokens: int, size: tuple[int, int], presses: int) -> list[float]:
    ids = [(i * 37) % 900 + 10 for i in range(tokens)]
    app = AttnScopeApp(model=model, prompt=ids, device="cpu", max_new_tokens=0)
    frames: list[tuple[float, tuple]] = []  # (time, (layer, head, map generation)) of each frame sent
    async with app.run_test(size=size) as pilot:
        while app.result is None or app.workers:  # the run, its checks and the overviews computed ahead
            await pilot.pause(0.1)
        view = app.query_one(HeatmapView)
        nav = app.query_one(Navigator)
        nav.root.expand_all()
        nav.focus()
        nav.select_head(0, 0)
        await pilot.pause()

        display = app._display

        def timed_display(screen, update) -> None:
            if isinstance(update, CompositorUpdate):
                update.render_segments(app.console)  # the terminal output a real driver writes
            drawn = view._strips_key[1] if view._strips_key else None
            frames.append((time.perf_counter(), (view.layer_idx, view.head_idx, drawn)))
            display(screen, update)

        app._display = timed_display
        times = []
        while len(times) < presses:
            if nav.cursor_line >= nav.last_line:  # from the last head back to the first
                nav.select_head(0, 0)
                await pilot.pause()
            before = (view.layer_idx, view.head_idx)
            frames.clear()
            start = time.perf_counter()
            await pilot.press("down")
            await pilot.pause()
            if (view.layer_idx, view.head_idx) == before:
                continue  # the cursor went over a layer or kv node: no head was selected
            target = (view.layer_idx, view.head_idx, view._generation)
            shown = [t for t, state in frames if state == target]
            if not shown:
                raise RuntimeError("no frame showed the selected head")
            times.append(shown[0] - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-code")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--size", default="160x48")
    parser.add_argument("--presses", type=int, default=48)
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    times = asyncio.run(measure(args.model, args.tokens, size, args.presses))
    print(f"model {args.model} · {args.tokens} tokens · terminal {args.size} · {len(times)} head switches (↓)")
    print(
        f"key press → frame with the new heatmap: median {statistics.median(times) * 1e3:.1f} ms, "
        f"p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
