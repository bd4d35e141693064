"""Extending a finished run: how many epochs to add, asked in a dialog (e on its dashboard,
Enter on it in the picker). The run then resumes with ``epochs`` raised, as
``rlr train --resume RUN --set epochs=N`` does, and trains on from its final checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from rlr_engine.core.config import coerce_setting

from .value_dialog import ValueDialog

DEFAULT_EXTRA_EPOCHS = 10


def epochs_to_add_checker(epochs: int) -> Callable[[str], int]:
    """A dialog check: the text is a whole number k ≥ 1 of epochs to add to a run of ``epochs``;
    the result, ``epochs + k``, must be a value ``epochs`` allows (core/config.py)."""

    def check(text: str) -> int:
        try:
            extra = int(text.strip())
        except ValueError:
            raise ValueError(f"epochs to add must be a whole number ≥ 1, got {text.strip()!r}") from None
        if extra < 1:
            raise ValueError(f"epochs to add must be a whole number ≥ 1, got {extra}")
        return int(coerce_setting("epochs", epochs + extra, f"{epochs} + {extra} epochs"))

    return check


def extend_dialog(run_name: str, epochs: int) -> ValueDialog:
    """Dismisses with the run's new number of epochs, or None when cancelled."""
    return ValueDialog(
        f"Extend {run_name}",
        f"It finished after {epochs} epochs. Epochs to add: it trains on from its final checkpoint, "
        "on the same curves, and runs its final attack again at the end.",
        str(DEFAULT_EXTRA_EPOCHS),
        epochs_to_add_checker(epochs),
    )
