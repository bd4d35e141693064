"""The run's events: commands applied or rejected, truncations, checkpoints, evaluations."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

STYLES = {"applied": "green", "rejected": "bold red", "error": "bold red", "warning": "yellow",
          "truncation": "magenta", "checkpoint": "cyan", "attack": "blue", "evaluation": "", "info": "dim"}


class EventLog(RichLog):
    """Appends each event once (events carry increasing sequence numbers)."""

    last_seq = 0

    def show(self, events) -> None:
        for event in events:
            if event.seq <= self.last_seq:
                continue
            line = Text(time.strftime("%H:%M:%S ", time.localtime(event.time)), style="dim")
            line.append(f"[{event.kind}] ", style=STYLES.get(event.kind, ""))
            line.append(event.message)
            self.write(line)
            self.last_seq = event.seq
