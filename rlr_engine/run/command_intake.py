"""Commands as the engine thread takes them: drained from the queue that any thread fills (or,
under torch.distributed, rank 0's queue broadcast to every rank at the same step boundary),
each handed to its handler (commands.py), each acknowledged and recorded as an event."""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass

from rlr_engine.control.records import Command, Note
from rlr_engine.run.boundary import StepBoundary
from rlr_engine.run.commands import CHANGES_LAYERS, HANDLERS, RunControl
from rlr_engine.run.trainer import Trainer

QUEUE_WAIT_S = 0.2  # how long a paused engine waits for a command before it looks again


@dataclass(frozen=True)
class Request:
    """A command as queued: who sent it (``session``, 0 for the engine itself) and its id."""

    command: Command
    request_id: str
    session: int


class CommandIntake:
    """Applies queued commands at step boundaries (see the module docstring).

    Args:
        requests: the queue the thread-safe side fills.
        boundary: the data-parallel step boundary (None in a one-process run).
        acknowledge: ``acknowledge(request, status, message)`` reports each outcome.
        event: ``event(kind, message)`` records an event of the run.
        publish: ``publish(with_layers)`` publishes a snapshot after each command.
    """

    def __init__(
        self,
        requests: queue.Queue[Request],
        boundary: StepBoundary | None,
        acknowledge: Callable[[Request, str, str], None],
        event: Callable[[str, str], None],
        publish: Callable[[bool], None],
    ) -> None:
        self.requests = requests
        self.boundary = boundary
        self.acknowledge = acknowledge
        self.event = event
        self.publish = publish

    def apply(self, run: RunControl, trainer: Trainer, block: bool, snapshot_due: Callable[[], bool]) -> bool:
        """Apply what is queued (with ``block``, wait up to QUEUE_WAIT_S for it); returns whether
        rank 0 asked for the training window to be read now (torch.distributed; False otherwise)."""
        if self.boundary is None:
            requests, flush = self._take(block), False
        else:
            exchange = self.boundary.exchange(trainer, self._take, snapshot_due, block)
            if exchange is None:
                return False
            for warning in exchange.warnings:
                self.event("warning", warning)
            requests, flush = [Request(*request) for request in exchange.requests], exchange.flush
        for request in requests:
            self._apply(run, request)
        return flush

    def _take(self, block: bool) -> list[Request]:
        """Everything queued; with ``block``, wait up to QUEUE_WAIT_S for the first request."""
        requests = []
        while True:
            try:
                requests.append(self.requests.get(timeout=QUEUE_WAIT_S) if block else self.requests.get_nowait())
            except queue.Empty:
                return requests
            block = False

    def _apply(self, run: RunControl, request: Request) -> None:
        command = request.command
        handler = HANDLERS.get(type(command))
        try:
            if handler is None:
                raise ValueError(f"unknown command {command!r}")
            applied = handler(run, command)
        except (ValueError, TypeError) as error:
            self.event("rejected", f"{command.kind}: {error}")
            self.acknowledge(request, "rejected", str(error))
        else:
            if not isinstance(command, Note):  # a note is an event already
                self.event("applied", applied)
            self.acknowledge(request, "applied", applied)
        self.publish(isinstance(command, CHANGES_LAYERS))
