"""The engine: one run trained by a thread of its own, steered by commands, reported by
snapshots. This is its thread-safe surface; what the thread does is run_loop.RunLoop.

Commands come in through one thread-safe queue (``send``) and are applied at the next step
boundary through the handler table in commands.py; each gets an acknowledgement (applied or
rejected, with the reason). Snapshots go out as immutable records through an atomic reference
swap (``latest()``), at a bounded rate. The engine never waits for whoever reads them: a
``listener`` (the control server) is told of every event and acknowledgement and must not block.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from rlr_engine.control.protocol import ENGINE_SESSION
from rlr_engine.control.records import Ack, Command, Event, Snapshot, Stop
from rlr_engine.control.run_files import ERROR_LOG
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import CannotStart, CheckpointError
from rlr_engine.run.boundary import FollowerRecorder
from rlr_engine.run.command_intake import Request
from rlr_engine.run.distributed import SINGLE, Ranks
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.run_loop import RunLoop
from rlr_engine.run.trainer import Trainer

MAX_ACKS = 100


class EngineListener(Protocol):
    def event(self, event: Event) -> None: ...

    def ack(self, ack: Ack) -> None: ...


class Engine:
    """Trains one run in a background thread; every method here may be called from any thread.

    ``send(command)`` queues a command; ``latest()`` returns the newest Snapshot; ``acks`` holds
    the latest acknowledgements. With ``resume=True`` the run continues from its checkpoint: same
    step counter, optimizer state, ranks, τ and RNG.

    ``setup()`` loads the checkpoint (when resuming), the data and the model, writing nothing:
    call it before the run directory exists to fail early; ``start()`` calls it when nobody did.

    Under torch.distributed every rank runs an Engine with its ``ranks``: rank 0 records and
    takes commands; the others record nothing; all apply rank 0's commands at the same step
    boundary (boundary.py).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        resume: bool = False,
        ranks: Ranks = SINGLE,
        resume_settings: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.recorder = (Recorder if ranks.is_main else FollowerRecorder)(config, self.run_dir)
        self.recorder.on_event = self._tell_listener
        self.acks: deque[Ack] = deque(maxlen=MAX_ACKS)
        self.listener: EngineListener | None = None
        self._requests: queue.Queue[Request] = queue.Queue()
        self._loop = RunLoop(
            config, self.run_dir, self.recorder, ranks, resume, resume_settings, self._requests, self._acknowledge
        )
        self._thread: threading.Thread | None = None

    def setup(self) -> Engine:
        """Load everything the run needs (see RunLoop.setup); CheckpointError or CannotStart."""
        self._loop.setup()
        return self

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name=f"rlr-engine-{self.config.name}", daemon=True)
        self._thread.start()
        return self

    def send(self, command: Command, request_id: str = "", session: int = ENGINE_SESSION) -> None:
        """Queue a command; it is applied at the next step boundary and acknowledged."""
        self._requests.put(Request(command, request_id, session))

    def latest(self) -> Snapshot:
        return self._loop.publisher.latest()

    @property
    def trainer(self) -> Trainer | None:
        """The run's Trainer once set up (for reading; steer the run with ``send``)."""
        return self._loop.trainer

    @property
    def method_label(self) -> str:
        """The method with the τ (and β) it trains with now (see RunLoop.method_label)."""
        return self._loop.method_label

    def log_event(self, kind: str, message: str) -> None:
        """Record an event from another thread (the control server reporting a bad client)."""
        self._loop.event(kind, message)

    def recent_events(self) -> list[Event]:
        return self.recorder.recent_events()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask for a clean stop (final checkpoint) and wait for it."""
        self.send(Stop())
        return self.join(timeout)

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop.run()
        except (CannotStart, CheckpointError) as error:
            self._loop.fail(str(error))
        except Exception as error:  # report, never die silently
            log = self.run_dir / ERROR_LOG
            try:
                log.write_text(traceback.format_exc(), encoding="utf-8")
            except OSError:
                pass
            self._loop.fail(f"{type(error).__name__}: {error} (traceback in {log})")
        finally:
            self.recorder.close()

    def _acknowledge(self, request: Request, status: str, message: str) -> None:
        ack = Ack(request.request_id, request.session, request.command.kind, status, message)
        self.acks.append(ack)
        if self.listener is not None:
            self.listener.ack(ack)

    def _tell_listener(self, event: Event) -> None:
        """Every event the recorder records — the engine's own and the recorder's (evaluation,
        attack, checkpoint) — reaches attached dashboards."""
        if self.listener is not None:
            self.listener.event(event)
