"""What each command does to a running engine: one handler per command type, in one table.

A handler changes the engine and returns what it did, in words (the "applied" acknowledgement),
or raises ValueError with the reason and changes nothing (the "rejected" acknowledgement). It
runs on the engine thread, between steps.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from rlr_engine.control.records import (AttackNow, Command, Note, Pause, RefreshLayers, Resume, SaveCheckpoint, SetAdaptation, SetLearningRate, SetTau,
                      Stop, Truncate)

if TYPE_CHECKING:
    from rlr_engine.run.engine import Engine


def set_tau(engine: "Engine", command: SetTau) -> str:
    old = engine.trainer.tau
    engine.trainer.set_tau(command.tau)
    return f"τ: {old:g} → {engine.trainer.tau:g}"


def set_lr(engine: "Engine", command: SetLearningRate) -> str:
    old = engine.trainer.lr
    engine.trainer.set_lr(command.lr)
    return f"learning rate: {old:g} → {engine.trainer.lr:g}"


def truncate(engine: "Engine", command: Truncate) -> str:
    return engine.truncate(command.theta, command.rank, command.layer, scheduled=False)


def pause(engine: "Engine", command: Pause) -> str:
    if engine.state != "running":
        raise ValueError(f"cannot pause: the run is {engine.state}")
    engine.pause()
    return f"paused at step {engine.trainer.step}"


def resume(engine: "Engine", command: Resume) -> str:
    if engine.state != "paused":
        raise ValueError(f"cannot resume: the run is {engine.state}")
    rolled_back = engine.resume()
    return (f"rolled back to the checkpoint at step {engine.trainer.step} and resumed" if rolled_back
            else f"resumed at step {engine.trainer.step}")


def attack_now(engine: "Engine", command: AttackNow) -> str:
    spec = engine.config.attack_spec(command.attack, command.eps)
    started = time.monotonic()
    engine.attack(spec, full=False)
    engine.exclude_from_window(time.monotonic() - started)
    return f"attack {spec.name} at step {engine.trainer.step}"


def save_checkpoint(engine: "Engine", command: SaveCheckpoint) -> str:
    if not engine.checkpoint():
        raise ValueError("the model holds non-finite values; the last good checkpoint is kept")
    return f"checkpoint at step {engine.trainer.step}"


def refresh_layers(engine: "Engine", command: RefreshLayers) -> str:
    return "layer statistics refreshed"


def set_adaptation(engine: "Engine", command: SetAdaptation) -> str:
    trainer = engine.trainer
    if command.beta is None and command.adapt_every is None:
        raise ValueError("set_adaptation needs beta, adapt_every or both")
    old = (trainer.beta, trainer.adapt_every)
    trainer.set_adaptation(beta=command.beta, adapt_every=command.adapt_every)
    return f"β: {old[0]:g} → {trainer.beta:g}, window: {old[1]} → {trainer.adapt_every} batches"


NOTE_LEVELS = ("rejected", "info")


def note(engine: "Engine", command: Note) -> str:
    if command.level not in NOTE_LEVELS:
        raise ValueError(f"note.level = {command.level!r} is not allowed: expected one of {', '.join(NOTE_LEVELS)}")
    engine.record_note(command.level, command.message[:500])
    return "noted"


def stop(engine: "Engine", command: Stop) -> str:
    engine.request_stop()
    reason = f" ({command.reason})" if command.reason else ""
    return f"stopping at step {engine.trainer.step}{reason}: writing a final checkpoint"


HANDLERS: dict[type[Command], Callable[["Engine", Command], str]] = {
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
    Stop: stop,
}

# Commands after which the snapshot carries freshly computed layer spectra.
CHANGES_LAYERS = (SetTau, Truncate, RefreshLayers)
