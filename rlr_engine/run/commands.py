"""What each command does to a running engine: one handler per command type, in one table.

A handler asks the run for a change through ``RunControl`` — the narrow interface the engine
loop gives its commands — and returns what it did, in words (the "applied" acknowledgement), or
raises ValueError with the reason and changes nothing (the "rejected" acknowledgement). It runs
on the engine thread, between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from rlr_engine.control.records import (
    AttackNow,
    Command,
    Note,
    Pause,
    RefreshLayers,
    Resume,
    SaveCheckpoint,
    SetAdaptation,
    SetLearningRate,
    SetTau,
    Stop,
    Truncate,
    Undo,
)


class RunControl(Protocol):
    """What a command may do to a run (the engine loop implements it). Setters validate their
    value and raise ValueError, changing nothing, for one the run cannot take."""

    @property
    def state(self) -> str: ...

    @property
    def step(self) -> int: ...

    @property
    def tau(self) -> float: ...

    @property
    def lr(self) -> float: ...

    @property
    def beta(self) -> float | None: ...

    @property
    def adapt_every(self) -> int | None: ...

    def set_tau(self, tau: float) -> None: ...

    def set_lr(self, lr: float) -> None: ...

    def set_adaptation(self, beta: float | None, adapt_every: int | None) -> None: ...

    def truncate(self, theta: float | None, rank: int | None, layer: str | None, scheduled: bool) -> str: ...

    def undo(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> bool: ...

    def attack_now(self, attack: str | None, eps: tuple[float, ...] | None) -> str: ...

    def checkpoint(self) -> bool: ...

    def record_note(self, level: str, message: str) -> None: ...

    def request_stop(self) -> None: ...


def set_tau(run: RunControl, command: SetTau) -> str:
    old = run.tau
    run.set_tau(command.tau)
    return f"τ: {old:g} → {run.tau:g}"


def set_lr(run: RunControl, command: SetLearningRate) -> str:
    old = run.lr
    run.set_lr(command.lr)
    return f"learning rate: {old:g} → {run.lr:g}"


def truncate(run: RunControl, command: Truncate) -> str:
    return run.truncate(command.theta, command.rank, command.layer, scheduled=False)


def undo(run: RunControl, command: Undo) -> str:
    return run.undo()


def pause(run: RunControl, command: Pause) -> str:
    if run.state != "running":
        raise ValueError(f"cannot pause: the run is {run.state}")
    run.pause()
    return f"paused at step {run.step}"


def resume(run: RunControl, command: Resume) -> str:
    if run.state != "paused":
        raise ValueError(f"cannot resume: the run is {run.state}")
    rolled_back = run.resume()
    return (
        f"rolled back to the checkpoint at step {run.step} and resumed"
        if rolled_back
        else f"resumed at step {run.step}"
    )


def attack_now(run: RunControl, command: AttackNow) -> str:
    return run.attack_now(command.attack, command.eps)


def save_checkpoint(run: RunControl, command: SaveCheckpoint) -> str:
    if not run.checkpoint():
        raise ValueError("the model holds non-finite values; the last good checkpoint is kept")
    return f"checkpoint at step {run.step}"


def refresh_layers(run: RunControl, command: RefreshLayers) -> str:
    return "layer statistics refreshed"


def set_adaptation(run: RunControl, command: SetAdaptation) -> str:
    if command.beta is None and command.adapt_every is None:
        raise ValueError("set_adaptation needs beta, adapt_every or both")
    old = (run.beta, run.adapt_every)
    run.set_adaptation(command.beta, command.adapt_every)
    return f"β: {old[0]:g} → {run.beta:g}, window: {old[1]} → {run.adapt_every} batches"


NOTE_LEVELS = ("rejected", "info")


def note(run: RunControl, command: Note) -> str:
    if command.level not in NOTE_LEVELS:
        raise ValueError(f"note.level = {command.level!r} is not allowed: expected one of {', '.join(NOTE_LEVELS)}")
    run.record_note(command.level, command.message[:500])
    return "noted"


def stop(run: RunControl, command: Stop) -> str:
    run.request_stop()
    reason = f" ({command.reason})" if command.reason else ""
    return f"stopping at step {run.step}{reason}: writing a final checkpoint"


# Each handler takes its own command type.
Handler = Callable[[RunControl, Any], str]

HANDLERS: dict[type[Command], Handler] = {
    SetTau: set_tau,
    SetLearningRate: set_lr,
    Truncate: truncate,
    Pause: pause,
    Resume: resume,
    AttackNow: attack_now,
    SaveCheckpoint: save_checkpoint,
    RefreshLayers: refresh_layers,
    SetAdaptation: set_adaptation,
    Note: note,
    Undo: undo,
    Stop: stop,
}

# Commands after which the snapshot carries freshly computed layer spectra.
CHANGES_LAYERS = (SetTau, Truncate, Undo, RefreshLayers)
