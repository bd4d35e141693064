"""Loss and accuracy curves over steps (bounded, downsampled histories)."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from rlr_engine.control.records import Snapshot

from ..format import downsample
from .axes import legend_room, step_ticks
from .markers import series_marker

SERIES = {
    "loss": (("train_loss", "train"), ("val_loss", "val")),
    "accuracy": (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")),
}


class CurvesPlot(PlotextPlot):
    """Train / validation curves of one quantity (``kind`` is "loss" or "accuracy"); the legend
    has rows of its own above the data, and the x ticks end at the last step."""

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.points_drawn: dict[str, int] = {}

    def show(self, snap: Snapshot) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.kind)
        plt.xlabel("step")
        limit = max(2 * self.size.width, 16)
        plotted = False
        self.points_drawn = {}
        xs: list[float] = []
        ys: list[float] = []
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
                xs += [p[0] for p in points]
                ys += [p[1] for p in points]
        if not plotted:
            plt.title(f"{self.kind}: waiting for data")
        else:
            step_ticks(plt, xs, self.size.width)
            legend_room(plt, ys, len(self.points_drawn), self.size.height)
        self.refresh()
