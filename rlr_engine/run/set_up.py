"""Setting a run up: the device, the data, the model and optimizer (a Trainer), and for a resumed
run its checkpoint and what its resume tells the user. Nothing is written."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import CannotStart
from rlr_engine.core.presets import RESTORED_ON_RESUME
from rlr_engine.run.distributed import Ranks
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.resume_notes import resume_notes
from rlr_engine.run.trainer import Trainer, describe_device, load_run_data, resolve_device


@dataclass(frozen=True)
class SetUp:
    """A run ready to train: its Trainer, the device in words, and for a resumed run the
    checkpoint's payload (the recorder restores from it once the run begins) and the events its
    resume reports, as (kind, message)."""

    trainer: Trainer
    device_name: str
    resume_payload: dict[str, Any] | None
    resume_notes: list[tuple[str, str]]


def set_up(config: RunConfig, ranks: Ranks, recorder: Recorder, resume: bool, resume_settings: Iterable[str]) -> SetUp:
    """Load everything a run needs; raises CheckpointError or CannotStart (no data set, no such
    device, settings this model cannot take). The checkpoint of a resumed run is read first, so
    a corrupt one is reported before the data set loads.

    A resumed run trains with the hyperparameters of its checkpoint (RESTORED_ON_RESUME: τ, the
    learning rate, θ, … as last set live or by the schedule), except those the resume sets:
    ``resume_settings`` (--set) and any whose value in the config differs from the config saved
    with the checkpoint (config.toml edited, or a --set seen only through it)."""
    device = ranks.place(resolve_device(config.device))
    payload = recorder.load_checkpoint(device) if resume else None
    data = load_run_data(config, device)
    notes: list[tuple[str, str]] = []
    try:
        trainer = Trainer(config, data, device, ranks, pretrained=payload is None)
        if payload is not None:
            warnings = trainer.load_state_dict(payload, str(recorder.checkpoint_path))
            saved, current = payload.get("config", {}), config.to_dict()
            keys = frozenset(resume_settings) | {
                key for key in RESTORED_ON_RESUME if key in saved and saved[key] != current[key]
            }
            changes = trainer.set_restored(config, keys)
            notes = resume_notes(recorder.recent_events(), payload["step"], warnings, changes)
            if saved.get("epochs", config.epochs) != config.epochs:
                notes.append(
                    (
                        "info",
                        f"epochs: {saved['epochs']} → {config.epochs}; training goes on to step {trainer.total_steps}",
                    )
                )
    except ValueError as error:  # a setting this model cannot take (the message names it)
        raise CannotStart(f"{config.name}: {error}") from None
    # the device, and how the step runs on it (bf16, CUDA graph), as the header shows it
    return SetUp(trainer, " · ".join([describe_device(device), *trainer.execution]), payload, notes)
