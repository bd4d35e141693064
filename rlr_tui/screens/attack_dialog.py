"""A modal that picks which attack to run now, from the attack registry."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from rlr_engine.core.catalog import ATTACKS


class AttackDialog(ModalScreen[str | None]):
    """Dismisses with the chosen attack's registry name (what AttackNow accepts), or None when
    cancelled. The run's own attack is highlighted first."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(self, current: str | None = None) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Attack the live subset now with", id="dialog-title")
            yield OptionList(
                *[Option(f"{name:11} {info.summary}", id=name) for name, info in ATTACKS.items()], id="attacks"
            )
            yield Label("Enter: run · Esc: cancel (autoattack, cw-l2 and square are slow)", id="dialog-hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.current in ATTACKS:
            options.highlighted = list(ATTACKS).index(self.current)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
