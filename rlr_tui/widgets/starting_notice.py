"""What the app is starting, resuming or attaching to, shown from the key press until the run's
dashboard is (a toast would vanish first: loading the data set takes longer)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class StartingNotice(Static):
    """One line, hidden while nothing starts; follows the app's ``starting``."""

    def on_mount(self) -> None:
        self.watch(self.app, "starting", self.show, init=True)

    def show(self, doing: str) -> None:
        self.update(Text(f"⏳ {doing}" if doing else ""))  # plain text: a run name is not markup
        self.display = bool(doing)
