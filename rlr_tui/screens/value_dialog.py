"""A modal that asks for one value, validates it, and shows what is wrong next to the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class ValueDialog(ModalScreen[Any]):
    """Dismisses with the checked value, or None when cancelled. A value that ``check`` rejects
    (ValueError) is shown as an error under the field and nothing is returned."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(
        self,
        title: str,
        prompt: str,
        initial: str,
        check: Callable[[str], Any],
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_rejected(value, reason)`` is told of every value ``check`` refused (the dashboard
        records them in the run's events)."""
        super().__init__()
        self.title_text, self.prompt, self.initial, self.check = title, prompt, initial, check
        self.on_rejected = on_rejected

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Label(self.prompt, id="dialog-prompt")
            yield Input(value=self.initial, id="value", select_on_focus=True)
            yield Label("", id="error")
            yield Label("Enter: apply · Esc: cancel", id="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            value = self.check(event.value)
        except ValueError as error:
            self.query_one("#error", Label).update(str(error))
            event.input.add_class("-invalid")
            if self.on_rejected is not None:
                self.on_rejected(event.value, str(error))
            return
        self.dismiss(value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.input.remove_class("-invalid")
        self.query_one("#error", Label).update("")

    def action_cancel(self) -> None:
        self.dismiss(None)
