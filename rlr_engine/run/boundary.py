"""What the ranks of a data-parallel run agree on between steps, and the recorder of the ranks
that own no files.

Every rank runs the same engine loop on its own Trainer. Anything that changes the model, the
optimizer or the flow of the loop must happen on every rank at the same step: commands, pausing,
truncation (DistributedDataParallel is rebuilt around the new parameters on every rank at once),
the decision to read the training window (a collective). Rank 0 alone receives commands (from its
queue: the control socket, the dashboard, Ctrl+C) and alone knows the wall-clock snapshot rate, so
at a step boundary it broadcasts one plain record

    {"commands": [{"command": {"kind": "set_tau", "tau": 0.5}, "id": "7", "session": 3}, …],
     "flush": true}

with ``broadcast_object_list`` and every rank applies the same commands in the same order.
To cost no throughput the exchange happens every ``COMMAND_EVERY`` steps (and on every pass
of the loop while paused, so a resume reaches every rank); every ``CHECK_EVERY`` steps the ranks
also compare a checksum of their weights (``distributed.repair_drift``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rlr_engine.control.records import Command, Event, command_from_dict
from rlr_engine.run.distributed import Ranks, repair_drift
from rlr_engine.run.recorder import Recorder

COMMAND_EVERY = 8  # steps between command exchanges: ≤ 8 steps of latency for a command
CHECK_EVERY = 64  # steps between weight checksums


@dataclass(frozen=True)
class Exchange:
    """What every rank applies at this boundary: (command, request id, session) in rank 0's
    order, whether to read the training window now, and warnings to record."""

    requests: tuple[tuple[Command, str, int], ...]
    flush: bool
    warnings: tuple[str, ...]


class StepBoundary:
    """The step-boundary agreement of one rank (see the module docstring)."""

    def __init__(self, ranks: Ranks, command_every: int = COMMAND_EVERY, check_every: int = CHECK_EVERY) -> None:
        if check_every % command_every:
            raise ValueError(f"check_every ({check_every}) must be a multiple of command_every ({command_every})")
        self.ranks = ranks
        self.command_every = command_every
        self.check_every = check_every

    def exchange(
        self, trainer, take_requests: Callable[[bool], Iterable[Any]], flush_due: Callable[[], bool], block: bool
    ) -> Exchange | None:
        """A collective on the boundaries every rank agrees on (step multiples of
        ``command_every``, or every call while paused: ``block``); None elsewhere, without
        communicating. ``take_requests(block)`` (rank 0 only) drains the command queue; its items
        have ``command``, ``request_id`` and ``session``. ``flush_due()`` (rank 0 only) says
        whether a snapshot is due."""
        if not block and trainer.step % self.command_every:
            return None
        record = None
        if self.ranks.is_main:
            record = {
                "commands": [
                    {"command": r.command.to_dict(), "id": r.request_id, "session": r.session}
                    for r in take_requests(block)
                ],
                "flush": bool(flush_due()),
            }
        record = self.ranks.broadcast(record)
        requests = tuple((command_from_dict(dict(r["command"])), r["id"], r["session"]) for r in record["commands"])
        warnings: tuple[str, ...] = ()
        if not block and trainer.step % self.check_every == 0:
            spread = repair_drift(self.ranks, trainer.model, trainer.optimizer)
            if spread:
                warnings = (
                    f"weights drifted apart between ranks (checksum spread {spread:.3g}); "
                    f"rank 0's weights and optimizer state were copied to every rank",
                )
        return Exchange(requests, record["flush"], warnings)


class FollowerRecorder(Recorder):
    """The recorder of ranks other than 0: it keeps the same in-memory history (so the engine's
    code is the same on every rank) and writes nothing; rank 0's recorder owns the run
    directory."""

    def clear_summary(self) -> None:
        pass

    def event(self, step: int, kind: str, message: str) -> Event:
        self.event_seq += 1
        event = Event(self.event_seq, step, time.time(), kind, message)
        self.events.append(event)
        return event

    def _metric(self, record: dict[str, Any]) -> None:
        pass

    def train_seconds(self) -> float:
        return 0.0

    def save_checkpoint(self, trainer_state: dict[str, Any], config) -> Any:
        self.last_checkpoint_step = trainer_state["step"]
        return self.checkpoint_path

    def restore(self, payload: dict[str, Any], trim: bool) -> None:
        super().restore(payload, trim=False)

    def write_summary(self, state: str, method: str, tau: float, facts: dict[str, Any]) -> None:
        pass
