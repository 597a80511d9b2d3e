"""What `attnscope run` prints: the report's tables, then one head's heatmap (or every head of a
layer as small multiples), then optionally the top keys of one query."""

from __future__ import annotations

from rich.text import Text

from attnscope.render.heatmap import TopKeys, head_heatmap, small_multiples
from attnscope.render.tables import number_text, run_report


def run_view(
    result,
    report,
    layer: int,
    head: int,
    why: str = "",
    *,
    width: int,
    every_head: bool = False,
    log: bool = False,
    query: int | None = None,
) -> list:
    """The renderables of a run: `report`'s tables, then `layer`/`head` drawn (`why` says how it was
    chosen), or every head of `layer`, then the top keys of query position `query`."""
    rec = result.records[layer]
    parts = [run_report(report), Text()]
    if every_head:
        stats = report.layers[layer].heads
        parts.append(
            small_multiples(
                result,
                layer,
                range(result.n_heads),
                width=width,
                cell_width=28,
                max_lines=8,
                log=log,
                title=f"layer {layer} · every head · {report.layers[layer].mask}",
                label=lambda h: f"h{h}·kv{stats[h].kv_head} H={number_text(stats[h].entropy, '.2f')}",
            )
        )
    else:
        title = f"layer {layer} · head {head} (kv {head // rec.group_size}) · {rec.mask!r}{why}"
        parts.append(head_heatmap(result, layer, head, width=width, log=log, title=title))
    if query is not None:
        row = result.attention(layer, head, queries=slice(query, query + 1))[0].cpu().numpy()
        allowed = rec.allowed(head)[query].cpu().numpy()
        parts += [Text(), TopKeys(row, result.tokens, query, result.tokens[query], allowed=allowed)]
    return parts
