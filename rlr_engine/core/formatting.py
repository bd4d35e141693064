"""Numbers as people read them, shared by the headless display, reports and the dashboard
(plain Python: the dashboard uses it without loading torch)."""

from __future__ import annotations

import math

# The colour a run's state is shown in (rich and Textual read the same names).
STATE_STYLES = {
    "running": "green",
    "paused": "yellow",
    "starting": "",
    "stopped": "yellow",
    "finished": "cyan",
    "failed": "red",
    "dead": "bold red",
}


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage ("87.5%"); "–" when there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}%"


def pct_pm(mean: float, std: float, digits: int = 1) -> str:
    """Mean ± standard deviation of fractions, in percent ("87.5 ± 1.2"); "–" without a mean."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def versus_dense(compression: float, digits: int = 1) -> str:
    """A model's size against its dense version, ``compression`` = 1 − params / dense params:
    "80.0% fewer than dense", or "6.3% more than dense" when the factors hold more."""
    if compression < 0:
        return f"{pct(-compression, digits)} more than dense"
    return f"{pct(compression, digits)} fewer than dense"
