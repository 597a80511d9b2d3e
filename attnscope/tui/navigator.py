"""The navigator: layers, and their heads grouped by kv head, with a status glyph per head and a
sparkline of each layer's per-head entropy; ⊘ after an ablated head (and its layer)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Tree

from attnscope.render.tables import ROLE_SHORT, ROLE_STYLE

SPARK = "▁▂▃▄▅▆▇█"
GLYPHS = {
    "ok": ("●", "green"),
    "nan": ("✖", "bold red"),
    "tolerance": ("▲", "bold yellow"),
    "masked": ("◌", "magenta"),
    "pending": ("○", "grey50"),
}
MARK = Text(" ⊘", style="bold magenta")  # after the name of an ablated head, and of its layer


def head_status(flags: list[str]) -> str:
    if "nan" in flags:
        return "nan"
    if "full_vs_incremental" in flags or "backend_vs_reference" in flags or "causality" in flags:
        return "tolerance"
    if "masked_rows" in flags:
        return "masked"
    return "ok"


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if isinstance(v, float)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(SPARK[round((v - lo) / span * (len(SPARK) - 1))] if isinstance(v, float) else "?" for v in values)


class Navigator(Tree):
    """Tree: layer → kv head → query heads. `selected` is the (layer, head) under the cursor.

    It is set from the cursor's watcher, so a watcher of `selected` (the app's) runs while the key
    press is handled and the new heatmap is drawn in the same frame as the cursor; a message would
    arrive after that frame and wait for the next one (17–33 ms later).
    """

    # repaint=False: the tree redraws the cursor's lines itself; a repaint would draw every line (~7 ms at 240×70)
    selected: reactive[tuple[int, int] | None] = reactive(None, init=False, repaint=False)

    DEFAULT_CSS = """
    Navigator { width: 30; }
    """

    def __init__(self, **kwargs):
        super().__init__("model", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self.marked: set[tuple[int, int]] = set()  # the (layer, head) pairs shown ablated
        self._plain: dict[Any, Text] = {}  # node data -> its label without the mark

    def label(self, node, text: Text) -> None:
        """Set a layer's or head's label, marked after its name when it (a head of the layer) is ablated."""
        self._plain[node.data] = text
        kind, layer, head = node.data
        if (layer, head) in self.marked or (kind == "layer" and any(at == layer for at, _ in self.marked)):
            end = len(f"L{layer}") if kind == "layer" else len(f"● h{head}")
            text = Text.assemble(text[:end], MARK, text[end:])
        node.set_label(text)

    def mark(self, marked: set[tuple[int, int]]) -> None:
        """Show the heads `marked` (layer, head) as ablated, and no other."""
        self.marked = set(marked)
        for node in self.root.children:
            self.label(node, self._plain[node.data])
            for leaf in (leaf for kv in node.children for leaf in kv.children):
                self.label(leaf, self._plain[leaf.data])

    def reset(self, label: str) -> None:
        self.clear()
        self.selected = None
        self.root.set_label(label)

    def add_layer(self, layer: int, n_heads: int, n_kv: int, mask: str = "") -> None:
        """A layer's node with pending heads (its record arrived; statistics follow)."""
        node = self.root.add("", data=("layer", layer, None), expand=layer == 0)
        self.label(node, Text(f"L{layer} {mask}"))
        group = n_heads // n_kv
        for kv in range(n_kv):
            kv_node = node.add(Text(f"kv{kv}", style="dim"), data=("kv", layer, kv), expand=True)
            for h in range(kv * group, (kv + 1) * group):
                glyph, style = GLYPHS["pending"]
                self.label(kv_node.add_leaf("", data=("head", layer, h)), Text.assemble((glyph, style), f" h{h}"))

    def update_report(self, report) -> None:
        """Glyphs, entropies and sparklines from a Report."""
        for node in self.root.children:
            _, layer, _ = node.data
            heads = report.layers[layer].heads
            self.label(
                node,
                Text.assemble(
                    f"L{layer} ",
                    (sparkline([h.entropy for h in heads]), "cyan"),
                    (f" {report.layers[layer].mask}", "dim"),
                ),
            )
            for kv_node in node.children:
                for leaf in kv_node.children:
                    h = leaf.data[2]
                    stats = heads[h]
                    glyph, style = GLYPHS[head_status(stats.flags)]
                    entropy = f"{stats.entropy:.2f}" if isinstance(stats.entropy, float) else str(stats.entropy)
                    role = ROLE_SHORT.get(stats.role, "")
                    self.label(
                        leaf,
                        Text.assemble(
                            (glyph, style),
                            f" h{h} ",
                            (f"H {entropy} ", "dim"),
                            (role, ROLE_STYLE.get(stats.role, "dim")),
                        ),
                    )

    def select_head(self, layer: int, head: int) -> None:
        """Put the cursor on a head, in view: its layer open, every other layer closed (stepping through
        thirty layers leaves one open, not a list that pushes the cursor off the screen)."""
        leaf = None
        for node in self.root.children:
            if node.data[1] == layer:
                if not node.is_expanded:
                    node.expand()
                leaf = next((lf for kv in node.children for lf in kv.children if lf.data[2] == head), None)
            elif node.is_expanded:
                node.collapse()
        if leaf is not None:
            _ = self._tree_lines  # Tree numbers the lines lazily: number them now, or the cursor misses
            self.move_cursor(leaf)
            self.scroll_to_node(leaf, animate=False)

    def step(self, at: tuple[int, int], n_layers: int, n_heads: int, heads: int = 0, layers: int = 0) -> None:
        """Select the head `heads` on from `at` (on into the next layer) or the same head `layers` on."""
        layer, head = at
        if heads:
            self.select_head(*divmod((layer * n_heads + head + heads) % (n_layers * n_heads), n_heads))
        else:
            self.select_head((layer + layers) % n_layers, head)

    def watch_cursor_line(self, previous_line: int, line: int) -> None:
        super().watch_cursor_line(previous_line, line)
        data = self.cursor_node.data if self.cursor_node is not None else None
        if data and data[0] == "head":
            self.selected = (data[1], data[2])
