"""What the screens ask of the app: they post these messages (they bubble up to the app, which
starts, resumes and attaches to engines) instead of calling the app's methods."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.message import Message


class StartRun(Message):
    """Start a new run of ``preset`` (with the app's start-up ``--set``)."""

    def __init__(self, preset: str) -> None:
        super().__init__()
        self.preset = preset


class OpenRun(Message):
    """Open ``run_dir``: attach when its engine lives, resume it otherwise. ``overrides`` are
    ``--set`` items for the resume (``epochs=N`` extends a finished run)."""

    def __init__(self, run_dir: str | Path, overrides: Sequence[str] = ()) -> None:
        super().__init__()
        self.run_dir, self.overrides = Path(run_dir), list(overrides)


class AttachRun(Message):
    """Attach to the engine that lives in ``run_dir`` again (it was resumed elsewhere)."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)


class Detach(Message):
    """Leave the run training without this dashboard."""
