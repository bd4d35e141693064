"""The engine process: one run, its control socket and its signals, for as long as the run lives.

- SIGTERM and SIGINT stop the run cleanly (final checkpoint, a "stopped" event and summary);
  a second SIGINT in a terminal aborts at once.
- SIGHUP (the terminal closed) stops a run started in a terminal the same way; a detached engine
  has no terminal and ignores it.
- The engine holds the run's lock (engine.json) and serves control.sock until it ends; then it
  tells its clients the run ended, removes the socket and releases the lock.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rlr_engine.control.protocol import PROTOCOL_VERSION
from rlr_engine.control.records import Snapshot, Stop
from rlr_engine.control.run_dirs import EngineLock
from rlr_engine.control.run_files import CONTROL_SOCKET, ENGINE_LOG
from rlr_engine.core.errors import CannotStart
from rlr_engine.run.engine import Engine
from rlr_engine.run.server import ControlServer

STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}


def serve_run(
    engine: Engine,
    detached: bool,
    follow: Callable[[Engine], Snapshot],
    on_ready: Callable[[Path], None] = lambda run_dir: None,
    abort_on_second_interrupt: bool = True,
) -> tuple[Snapshot, int | None]:
    """Run ``engine`` (already set up, its run directory created) with its control server until it
    ends; ``follow(engine)`` shows it meanwhile and returns the last snapshot. Returns that
    snapshot and the stop signal's exit code (None when no signal stopped it); CannotStart, with
    the engine not started, when the control socket cannot listen. A second Ctrl+C
    aborts unless ``abort_on_second_interrupt`` is false (under torchrun, whose agent repeats
    the terminal's Ctrl+C)."""
    run_dir = engine.run_dir
    lock = EngineLock(
        run_dir,
        {
            "protocol": PROTOCOL_VERSION,
            "preset": engine.config.name,
            "total_steps": engine.trainer.total_steps if engine.trainer else None,
            "detached": detached,
        },
    )
    server = ControlServer(engine, run_dir / CONTROL_SOCKET)
    engine.listener = server
    stopped_by: list[int] = []

    def on_signal(signum, frame) -> None:
        if signum == signal.SIGINT and stopped_by and not detached and abort_on_second_interrupt:
            raise KeyboardInterrupt  # the second Ctrl+C: abort now
        if not stopped_by:
            stopped_by.append(STOP_SIGNALS[signum])
            engine.send(Stop(reason=f"{signal.Signals(signum).name} received"))
            if not detached:
                try:
                    print("stopping: writing a final checkpoint (Ctrl+C again to abort)", file=sys.stderr, flush=True)
                except OSError:
                    pass

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN if detached and signum == signal.SIGHUP else on_signal)
    try:
        try:
            server.start()
        except OSError as error:
            raise CannotStart(f"cannot listen on {run_dir / CONTROL_SOCKET}: {error}") from None
        engine.start()
        on_ready(run_dir)
        snap = follow(engine)
    finally:
        engine.join()
        server.close()
        lock.release()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return snap, (stopped_by[0] if stopped_by else None)


def become_detached_log(run_dir: Path) -> None:
    """After the ready line: stdout and stderr go to the run's engine.log from now on."""
    fd = os.open(run_dir / ENGINE_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
