"""The run's events: commands applied or rejected, truncations, checkpoints, evaluations."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text
from textual.widgets import RichLog

from rlr_engine.control.records import Event

STYLES = {
    "applied": "green",
    "rejected": "bold red",
    "error": "bold red",
    "warning": "yellow",
    "truncation": "magenta",
    "checkpoint": "cyan",
    "attack": "blue",
    "evaluation": "",
    "info": "dim",
}


class EventLog(RichLog):
    """Appends each event once (events carry increasing sequence numbers).

    It follows the newest events only while the view is at the bottom: once the user scrolls
    back (Up, PageUp, Home, the mouse), new events are appended without moving the view, and
    scrolling to the end (End) follows the tail again."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.last_seq = 0

    def show(self, events: Sequence[Event]) -> None:
        fresh = [event for event in events if event.seq > self.last_seq]
        if not fresh:
            return
        follow = self.is_vertical_scroll_end
        for event in fresh:
            line = Text(time.strftime("%H:%M:%S ", time.localtime(event.time)), style="dim")
            line.append(f"[{event.kind}] ", style=STYLES.get(event.kind, ""))
            line.append(event.message)
            self.write(line, scroll_end=follow)
            self.last_seq = event.seq
