"""Plot markers that keep series apart with colour and without it.

With colour every line is drawn in braille (the finest plotext marker) and told apart by its
colour. Without colour (NO_COLOR, or a terminal that shows none) every series gets its own
character, which the legend repeats, so train / val / test and each ε stay readable."""

from __future__ import annotations

MONOCHROME_MARKERS = ("•", "+", "x", "o", "*", "#", "%", "@")


def series_marker(index: int, points: int, no_color: bool) -> str:
    """The marker of the ``index``-th series of a plot that has ``points`` points."""
    if no_color:
        return MONOCHROME_MARKERS[index % len(MONOCHROME_MARKERS)]
    return "braille" if points > 1 else "dot"
