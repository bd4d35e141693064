"""Rank per layer as bars of current rank against full rank, plus model compression."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from rlr_engine.core.formatting import versus_dense


class RankBars(Static):
    """One bar per compressible layer; dense layers are drawn full and marked dense. Each row
    ends with the layer's dense shape (the weight as a matrix: c_out × c_in·kh·kw for a
    convolution), what its rank is out of."""

    rows: tuple[tuple[str, int, int], ...] = ()

    def show(self, snap) -> None:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column("layer", no_wrap=True, max_width=14)
        table.add_column("bar", ratio=1)
        table.add_column("rank", justify="right", no_wrap=True)
        table.add_column("shape", justify="right", no_wrap=True, style="dim")
        shapes = [f"{layer.shape[0]}×{layer.shape[1]}" for layer in snap.layers]
        width = max(self.size.width - 27 - max(map(len, shapes), default=0), 8)
        self.rows = tuple((layer.name, layer.rank, layer.full_rank) for layer in snap.layers)
        for layer, shape in zip(snap.layers, shapes):
            filled = round(width * layer.rank / max(layer.full_rank, 1))
            bar = Text("█" * filled, style="green" if layer.low_rank else "blue")
            bar.append("░" * (width - filled), style="dim")
            table.add_row(layer.name, bar, f"{layer.rank}/{layer.full_rank}" + ("" if layer.low_rank else " d"), shape)
        summary = Text(
            f"{snap.params:,} params · {versus_dense(snap.compression)} · {100 * snap.rank_fraction:.0f}% of rank kept",
            style="bold",
        )
        self.update(_stack(summary, table))


def _stack(*renderables):
    grid = Table.grid(expand=True)
    grid.add_column()
    for item in renderables:
        grid.add_row(item)
    return grid
