"""How long the TUI takes to show another head: drives the app headless (Textual's Pilot) on a
1024-token prompt with the default model, presses ↓ in the navigator and times each key press to the
first frame that shows the new head's heatmap. Goal: median <= 50 ms at every terminal size up to 240×70.

What is timed is what a person waits for: the key event, the navigator's highlight, the heatmap drawn
for the new head and the screen update, including turning that update into the escape sequences a
terminal would be sent (the headless driver skips that step, so the script does it). The Pilot's own
idle waits between key presses are not counted: each time runs from the press to the frame.

The model runs once; each size is then reached by resizing the terminal (as a person does), and its
switches are timed once the overviews of the new size have been computed ahead. `--rounds` times the
sizes again in turn, so that each size sees the same load. Beside the wall-clock times, the CPU time of
the app's thread over the same spans: on a shared machine it moves much less with the load.

The app draws the heads next to the one shown while it is idle (`HeatmapView.draw_ahead`), and the
Pilot's pause after each switch lets it: a person's pace. `--cold` turns that off, so that every switch
draws its head from scratch, as when a key held down outpaces the app.

    python benchmarks/tui.py [--model tiny-code] [--tokens 1024] [--size 80x24,160x48,220x60,240x70]
                             [--presses 48] [--rounds 1] [--cold]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from textual._compositor import CompositorUpdate

from attnscope.tui.app import AttnScopeApp
from attnscope.tui.heatmap_view import HeatmapView
from attnscope.tui.navigator import Navigator

GOAL_MS = 50.0  # median, at every size up to 240×70
SIZES = "80x24,160x48,220x60,240x70"


def p90(times: list[float]) -> float:
    return sorted(times)[int(0.9 * len(times))]


async def measure(
    model: str, tokens: int, sizes: list[tuple[int, int]], presses: int, rounds: int = 1
) -> dict[tuple[int, int], list[list[tuple[float, float]]]]:
    """Seconds from each ↓ to the frame with the new head, and the app thread's CPU seconds in that span,
    per size, per round."""
    ids = [(i * 37) % 900 + 10 for i in range(tokens)]
    app = AttnScopeApp(model=model, prompt=ids, device="cpu", max_new_tokens=0)
    frames: list[tuple[float, float, tuple]] = []  # (time, CPU time, (layer, head, map generation)) of each frame
    times: dict[tuple[int, int], list[list[tuple[float, float]]]] = {size: [] for size in sizes}
    async with app.run_test(size=sizes[0]) as pilot:

        async def settle() -> None:  # the run, its checks and the overviews computed ahead
            while app.result is None or app.workers:
                await pilot.pause(0.1)

        await settle()
        view = app.query_one(HeatmapView)
        nav = app.query_one(Navigator)
        display = app._display

        def timed_display(screen, update) -> None:
            if isinstance(update, CompositorUpdate):
                update.render_segments(app.console)  # the terminal output a real driver writes
            drawn = view._strips_key[1] if view._strips_key else None
            frames.append((time.perf_counter(), time.thread_time(), (view.layer_idx, view.head_idx, drawn)))
            display(screen, update)

        app._display = timed_display
        for _ in range(rounds):
            for size in sizes:
                if app.size != size:
                    await pilot.resize_terminal(*size)
                    await settle()
                nav.root.expand_all()
                nav.focus()
                nav.select_head(0, 0)
                await pilot.pause()
                run: list[tuple[float, float]] = []
                while len(run) < presses:
                    if nav.cursor_line >= nav.last_line:  # from the last head back to the first
                        nav.select_head(0, 0)
                        await pilot.pause()
                    before = (view.layer_idx, view.head_idx)
                    frames.clear()
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    await pilot.press("down")
                    await pilot.pause()
                    if (view.layer_idx, view.head_idx) == before:
                        continue  # the cursor went over a layer or kv node: no head was selected
                    target = (view.layer_idx, view.head_idx, view._generation)
                    shown = [(t - start, cpu - start_cpu) for t, cpu, state in frames if state == target]
                    if not shown:
                        raise RuntimeError("no frame showed the selected head")
                    run.append(shown[0])
                times[size].append(run)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-code")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--size", default=SIZES, help=f"terminal sizes, comma-separated (default {SIZES})")
    parser.add_argument("--presses", type=int, default=48, help="head switches per size and round")
    parser.add_argument("--rounds", type=int, default=1, help="times each size is measured, sizes in turn")
    parser.add_argument("--cold", action="store_true", help="no head drawn ahead: each switch draws from scratch")
    args = parser.parse_args()
    if args.cold:
        HeatmapView._draw_ahead_soon = lambda self: None  # type: ignore[method-assign]
    sizes = [(int(w), int(h)) for w, h in (s.strip().split("x") for s in args.size.split(","))]
    load = os.getloadavg()[0]
    times = asyncio.run(measure(args.model, args.tokens, sizes, args.presses, args.rounds))
    print(
        f"model {args.model} · {args.tokens} tokens · {args.presses} head switches (↓) per size and round"
        f"{' · cold (nothing drawn ahead)' if args.cold else ''} · "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print("key press → frame with the new heatmap (ms; CPU: the app thread's CPU time in the same spans):")
    print(
        f"{'terminal':>9} {'median':>7} {'p90':>7} {'max':>7} {'CPU med':>8} {'CPU p90':>8}  "
        f"goal: median ≤ {GOAL_MS:.0f} ms"
    )
    met = []
    for (w, h), runs in times.items():
        wall = [t for run in runs for t, _ in run]
        cpu = [c for run in runs for _, c in run]
        median = statistics.median(wall) * 1e3
        met.append(median <= GOAL_MS)
        medians = ", ".join(f"{statistics.median([t for t, _ in run]) * 1e3:.1f}" for run in runs)
        print(
            f"{f'{w}x{h}':>9} {median:7.1f} {p90(wall) * 1e3:7.1f} {max(wall) * 1e3:7.1f} "
            f"{statistics.median(cpu) * 1e3:8.1f} {p90(cpu) * 1e3:8.1f}  {'met' if met[-1] else 'NOT met'}"
            + (f"  (rounds' medians {medians})" if len(runs) > 1 else "")
        )
    print(f"goal {'met at every size' if all(met) else 'NOT met at every size'}")


if __name__ == "__main__":
    main()
