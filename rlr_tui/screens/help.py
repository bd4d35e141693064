"""Help: every key of the dashboard, generated from its bindings."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", id="close-help")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        table = Table(title="rlr-tui keys", expand=True, show_edge=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does")
        for binding in self.bindings:
            keys = ", ".join(self.app.get_key_display(Binding(k, "")) for k in binding.key.split(","))
            table.add_row(keys, binding.tooltip or binding.description)
        with VerticalScroll(id="dialog"):
            yield Static(table)
            yield Static("Esc closes this help. The command palette (Ctrl+P) lists the same actions.", id="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
