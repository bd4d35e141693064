"""Table of κ, σ_min, σ_max and rank for every layer."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import DataTable

from rlr_engine.control.records import LayerStats

from ..format import num


class KappaTable(DataTable):
    """One row per compressible layer; the row of the selected layer is highlighted."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_columns("layer", "rank", "κ", "σ_max")

    def show(self, layers: Sequence[LayerStats], selected: int) -> None:
        self.clear()
        for layer in layers:
            self.add_row(
                layer.name, f"{layer.rank}/{layer.full_rank}", num(layer.kappa), num(layer.sigma_max), key=layer.name
            )
        if layers:
            self.move_cursor(row=min(selected, len(layers) - 1), animate=False)
