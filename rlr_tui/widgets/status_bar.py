"""Status bar: what runs where, how far, how fast, with which hyperparameters."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from rlr_engine.control.records import Snapshot
from rlr_engine.core.formatting import STATE_STYLES

from ..format import duration, num


class StatusBar(Static):
    """Two lines, never wrapped (app.tcss): run identity and state; progress (with the rate and ETA only while the run
    trains) and hyperparameters — or, once the run ended or its engine died, the message that says
    so and what to do (the hyperparameters can no longer be steered)."""

    def show(self, snap: Snapshot) -> None:
        first = Text()
        first.append(f" {snap.state.upper()} ", style=f"reverse bold {STATE_STYLES.get(snap.state, '')}")
        first.append(f" {snap.preset}", style="bold")
        first.append(f"  {snap.method} · {snap.model} on {snap.dataset} · {snap.device or '…'}")
        second = Text()
        if snap.message and not snap.active:  # the step it ended at and what to do, within 80 columns
            second.append(f" step {snap.step}/{snap.total_steps or '?'}  ")
            second.append(snap.message, style="red")
            self.update(Text("\n").join([first, second]))
            return
        second.append(f" epoch {snap.epoch}/{snap.epochs}  step {snap.step}/{snap.total_steps or '?'}")
        if snap.state == "running":  # a paused or ended run has no rate and no ETA
            second.append(f"  {snap.samples_per_s:,.0f}/s  ETA {duration(snap.eta_s)}")
        second.append(f"  τ {num(snap.tau)}  θ {num(snap.theta)}  lr {num(snap.lr)}", style="bold")
        if snap.message:
            second.append(f"  {snap.message}", style="red")
        self.update(Text("\n").join([first, second]))
