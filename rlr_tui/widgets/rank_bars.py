"""Rank per layer as bars of current rank against full rank, plus model compression."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from rlr_engine.control.records import Snapshot
from rlr_engine.core.formatting import versus_dense

NAME_WIDTH = 14  # a layer's name, cut past it
MIN_BAR = 8
LEGEND = (
    ("█", "green", " kept/full rank of a low-rank layer   "),
    ("█", "blue", " dense layer, not compressed   "),
    ("", "", "dim: the weight as a matrix"),
)


class RankBars(Static):
    """One bar per compressible layer, as wide as the widget allows, its rank (kept/full) right
    after it; dense layers are drawn full, in their own colour, and say so. Each row ends with
    the layer's dense shape (the weight as a matrix: c_out × c_in·kh·kw for a convolution), what
    its rank is out of. A legend says what the colours and numbers mean. Drawn again at the new
    width when the widget is resized."""

    rows: tuple[tuple[str, int, int], ...] = ()
    bar_width: int = 0
    _snap: Snapshot | None = None

    def show(self, snap: Snapshot) -> None:
        self._snap = snap
        labels = [f"{layer.rank}/{layer.full_rank}" + ("" if layer.low_rank else " (dense)") for layer in snap.layers]
        shapes = [f"{layer.shape[0]}×{layer.shape[1]}" for layer in snap.layers]
        taken = NAME_WIDTH + max(map(len, labels), default=0) + max(map(len, shapes), default=0) + 3
        self.bar_width = width = max(self.content_size.width - taken, MIN_BAR)
        table = Table.grid(padding=(0, 1))
        table.add_column("layer", no_wrap=True, width=NAME_WIDTH)
        table.add_column("bar", no_wrap=True, width=width)
        table.add_column("rank", no_wrap=True)
        table.add_column("shape", no_wrap=True, style="dim")
        self.rows = tuple((layer.name, layer.rank, layer.full_rank) for layer in snap.layers)
        for layer, label, shape in zip(snap.layers, labels, shapes):
            filled = round(width * layer.rank / max(layer.full_rank, 1))
            bar = Text("█" * filled, style="green" if layer.low_rank else "blue")
            bar.append("░" * (width - filled), style="dim")
            table.add_row(layer.name, bar, label, shape)
        summary = Text(
            f"{snap.params:,} params · {versus_dense(snap.compression)} · {100 * snap.rank_fraction:.0f}% of rank kept",
            style="bold",
        )
        legend = Text()
        for mark, style, words in LEGEND:
            legend.append(mark, style=style)
            legend.append(words, style="dim")
        self.update(_stack(summary, table, legend))

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)


def _stack(*renderables):
    grid = Table.grid()
    grid.add_column()
    for item in renderables:
        grid.add_row(item)
    return grid
