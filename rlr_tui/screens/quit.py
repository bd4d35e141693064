"""Leaving a live run: stop it, detach from it, or stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class QuitScreen(ModalScreen[str]):
    """Dismisses with "stop" (final checkpoint, the run ends), "detach" (training continues
    without this dashboard) or "cancel"."""

    BINDINGS = [
        Binding("s", "answer('stop')", "Stop run", id="quit-stop"),
        Binding("d", "answer('detach')", "Detach", id="quit-detach"),
        Binding("c,escape", "answer('cancel')", "Cancel", id="quit-cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(
                "Leave the dashboard. Stop the run (a final checkpoint is written, it can be resumed), "
                "or detach (training continues; rlr-tui --attach RUN_DIR comes back)?",
                id="dialog-title",
            )
            with Horizontal(id="buttons"):
                yield Button("Stop run (s)", variant="error", id="stop")
                yield Button("Detach (d)", variant="primary", id="detach")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#detach", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)
