"""Checks of user-typed values shared by the optimizer, the engine and the dashboard.

Each returns the value as a float or raises ValueError naming the field, the value and what is
allowed. Plain Python only, so any front end can validate before it sends a command.
"""

from __future__ import annotations

import math
from typing import Any


def _as_float(field: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{field} must be {allowed}, got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        value = math.inf if text in ("inf", "infinity", "∞") else text
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be {allowed}, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{field} must be {allowed}, got {value!r}")
    return number


def check_tau(value: Any) -> float:
    """τ ∈ [0, ∞]; ∞ switches the conditioning off."""
    allowed = "a number in [0, inf] (inf switches conditioning off)"
    tau = _as_float("tau", value, allowed)
    if tau < 0:
        raise ValueError(f"tau must be {allowed}, got {value!r}")
    return tau


def check_lr(value: Any) -> float:
    """Learning rate in (0, 100]."""
    allowed = "a number in (0, 100]"
    lr = _as_float("lr", value, allowed)
    if not 0 < lr <= 100:
        raise ValueError(f"lr must be {allowed}, got {value!r}")
    return lr


def check_theta(value: Any) -> float:
    """Relative truncation tolerance θ ∈ [0, 1)."""
    allowed = "a number in [0, 1)"
    theta = _as_float("theta", value, allowed)
    if not 0 <= theta < 1:
        raise ValueError(f"theta must be {allowed}, got {value!r}")
    return theta


def check_beta(value: Any) -> float:
    """Weight β ∈ [0, ∞) of the soft conditioning regularizer; 0 switches it off."""
    allowed = "a number in [0, inf) (0 switches the regularizer off)"
    beta = _as_float("beta", value, allowed)
    if not 0 <= beta < math.inf:
        raise ValueError(f"beta must be {allowed}, got {value!r}")
    return beta


def check_adapt_every(value: Any) -> int:
    """Window length k ≥ 2 batches (augment on the first, truncate on the last)."""
    allowed = "an integer >= 2 (batches per rank-adaptation window)"
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():  # typed into the dashboard
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"adapt_every must be {allowed}, got {value!r}")
    return value
