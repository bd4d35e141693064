"""Singular values of the selected layer: a histogram (log scale switchable) with κ, σ_min, σ_max."""

from __future__ import annotations

import math

from textual.widgets import Static
from textual_plotext import PlotextPlot

from rlr_engine.control.records import LayerStats

from ..format import num


class SpectrumInfo(Static):
    """One line above the histogram: layer, shape, rank, κ, σ_min, σ_max."""

    def show(self, layer: LayerStats | None) -> None:
        if layer is None:
            self.update("no layer statistics yet")
            return
        kind = "low-rank" if layer.low_rank else "dense"
        self.update(
            f"[b]{layer.name}[/b] {kind} {layer.shape[0]}×{layer.shape[1]}  rank {layer.rank}/"
            f"{layer.full_rank}  [b]κ {num(layer.kappa)}[/b]  σmin {num(layer.sigma_min)}  "
            f"σmax {num(layer.sigma_max)}"
        )


class SpectrumPlot(PlotextPlot):
    """Histogram of σ(W) for one layer; ``log_scale`` bins log10 σ instead of σ."""

    def show(self, layer: LayerStats | None, log_scale: bool) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if layer is None or not layer.sigma:
            plt.title("singular values: waiting for data")
            self.refresh()
            return
        sigma = [s for s in layer.sigma if s > 0]
        values = [math.log10(s) for s in sigma] if log_scale else list(layer.sigma)
        bins = max(5, min(2 * math.ceil(math.sqrt(len(values))), max(self.size.width // 3, 5)))
        plt.hist(values, bins=bins)
        plt.title("histogram of log10 σ" if log_scale else "histogram of σ")
        self.refresh()
