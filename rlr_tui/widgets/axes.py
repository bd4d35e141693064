"""Axes of the step plots: x ticks that always end at the last step, and room at the top for
the legend, which plotext draws over the top-left corner of the canvas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Rows of a plotext figure that are not canvas: the title, the frame (2), the x ticks and label.
NON_CANVAS_ROWS = 5
TICK_SPACING = 12  # columns per x tick label


def step_ticks(plt: Any, steps: Sequence[float], width: int) -> None:
    """Ticks at evenly spaced steps from the first to the last, the last one included and
    labelled (plotext's own choice may stop short of it or drop its label at the edge)."""
    if not steps:
        return
    first, last = int(min(steps)), int(max(steps))
    if last == first:
        plt.xticks([first], [str(first)])
        return
    count = max(2, min(6, width // TICK_SPACING))
    ticks = sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)})
    plt.xticks(ticks, [str(tick) for tick in ticks])


def legend_room(plt: Any, values: Sequence[float], entries: int, height: int) -> None:
    """Raise the y axis's top so that the top ``entries`` + 1 canvas rows stay free of data: the
    legend (one row per entry, top left) never hides a curve. ``height``: the widget's rows."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    rows = height - NON_CANVAS_ROWS
    if not finite or entries < 1 or rows - entries - 1 < 3:
        return
    low, high = min(finite), max(finite)
    span = (high - low) or max(abs(high), 1.0)
    reserved = entries + 1
    plt.ylim(low, high + span * reserved / (rows - reserved))
    # ticks only where the data is: no 110 % above an accuracy axis
    ticks = [low + i * span / 4 for i in range(5)] if high > low else [low]
    plt.yticks(ticks, [f"{tick:.4g}" for tick in ticks])
