"""Divergence: a non-finite loss or weight pauses the run, the last good checkpoint is kept, and
resuming rolls back to it (keeping the τ and learning rate set since). Engine thread only."""

from __future__ import annotations

from collections.abc import Callable

from rlr_engine.run.recorder import Recorder
from rlr_engine.run.trainer import Trainer


class Divergence:
    """Whether the run diverged since its last good state, and the way back.

    Args:
        recorder: the run's recorder (its checkpoint is the state rolled back to).
        event: ``event(kind, message)`` records an event of the run.
    """

    def __init__(self, recorder: Recorder, event: Callable[[str, str], None]) -> None:
        self.recorder = recorder
        self.event = event
        self.diverged = False

    def check(self, trainer: Trainer) -> bool:
        """True when a non-finite loss or weight appeared since the last check (the caller
        pauses the run)."""
        if trainer.take_finite():
            return False
        self.diverged = True
        last = self.recorder.last_checkpoint_step
        where = (
            f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written yet"
        )
        self.event(
            "error",
            f"non-finite loss near step {trainer.step}: training paused; {where}. "
            f"Lower the learning rate and resume to roll back.",
        )
        return True

    def roll_back(self, trainer: Trainer) -> bool:
        """After a divergence, load the last good checkpoint (keeping the τ and learning rate set
        since); True when it did. ValueError when there is none to roll back to."""
        if not self.diverged:
            return False
        if not self.recorder.checkpoint_path.is_file():
            raise ValueError(
                "training diverged and there is no good checkpoint to roll back to; "
                "stop and start again with a lower learning rate"
            )
        tau, lr = trainer.tau, trainer.lr
        payload = self.recorder.load_checkpoint(trainer.device)
        trainer.load_state_dict(payload, str(self.recorder.checkpoint_path))
        self.recorder.restore(payload, trim=False)
        trainer.set_tau(tau)
        trainer.set_lr(lr)
        self.diverged = False
        return True

    def recovered(self, trainer: Trainer) -> None:
        """The weights were replaced by earlier ones (an undo): finite ones end the divergence."""
        if self.diverged and trainer.parameters_finite():
            self.diverged = False
