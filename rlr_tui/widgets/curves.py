"""Loss and accuracy curves over steps (bounded, downsampled histories)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from ..format import downsample
from .markers import series_marker

SERIES = {
    "loss": (("train_loss", "train"), ("val_loss", "val")),
    "accuracy": (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")),
}


class CurvesPlot(PlotextPlot):
    """Train / validation curves of one quantity (``kind`` is "loss" or "accuracy")."""

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.points_drawn: dict[str, int] = {}

    def show(self, snap) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.kind)
        plt.xlabel("step")
        limit = max(2 * self.size.width, 16)
        plotted = False
        self.points_drawn = {}
        for index, (key, label) in enumerate(SERIES[self.kind]):
            points = downsample(snap.curves.get(key, ()), limit)
            if points:
                plt.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    label=label,
                    marker=series_marker(index, len(points), self.app.no_color),
                )
                plotted = True
                self.points_drawn[label] = len(points)
        if not plotted:
            plt.title(f"{self.kind}: waiting for data")
        self.refresh()
