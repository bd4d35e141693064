"""The dashboard ends with its terminal: the real ``rlr-tui --attach`` in a pseudo-terminal,
attached to a scripted engine served on a real control socket, whose terminal is closed at random
moments, stops reading, or whose process gets SIGTERM or SIGHUP with a dialog open."""

from __future__ import annotations

import fcntl
import os
import pty
import random
import re
import select
import signal
import struct
import sys
import termios
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fake_client import scripted_snapshot

from rlr_engine.control.records import Ack
from rlr_engine.control.run_dirs import create_run_dir
from rlr_engine.core.config import RunConfig
from rlr_engine.run.server import ControlServer

# The dashboard must be gone within 2 s of its terminal (terminal_watch: 0.2 s poll + 1.5 s
# grace); the bound here leaves room for a loaded machine.
EXIT_BOUND_S = 6.0
ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[A-Za-z~]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]|\x1b[=>]")


class ScriptedEngine:
    """What ControlServer serves: a snapshot whose step moves on every read (so the dashboard
    keeps redrawing), and every command applied."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.reads = 0
        self.server: ControlServer | None = None

    def latest(self):
        self.reads += 1
        return replace(scripted_snapshot(), step=2000 + self.reads, version=self.reads, events=())

    def recent_events(self):
        return list(scripted_snapshot().events)

    def send(self, command, request_id: str = "", session: int = 0) -> None:
        self.server.ack(Ack(request_id, session, command.kind, "applied", f"{command.kind} applied"))

    def log_event(self, kind: str, message: str) -> None:
        pass


@pytest.fixture
def served_run(tmp_path):
    """A run directory whose control socket a scripted engine serves."""
    run_dir = create_run_dir(tmp_path / "run", RunConfig(name="fake"))
    engine = ScriptedEngine(run_dir)
    engine.server = ControlServer(engine, run_dir / "control.sock").start()
    yield run_dir
    engine.server.close(timeout=1.0)


class Dashboard:
    """``rlr-tui --attach RUN_DIR`` on an 80×24 pseudo-terminal; this side is the terminal."""

    def __init__(self, run_dir: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its controlling terminal is the pty, as in a terminal window
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
                os.environ["TERM"] = "xterm-256color"
                os.execv(sys.executable, [sys.executable, "-m", "rlr_tui.app", "--attach", str(run_dir)])
            finally:
                os._exit(127)
        self.pid, self.master = pid, fd
        self.output = b""
        self.status: int | None = None

    def read_for(self, seconds: float) -> None:
        """Be a terminal that reads (and keeps what it read) for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.05))
            if ready:
                try:
                    self.output += os.read(self.master, 1 << 16)
                except OSError:  # the child closed its side (it exited)
                    return

    def read_until(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in ANSI.sub(b"", self.output):
            assert self.exited() is None, f"the dashboard exited before showing {text!r}"
            assert time.monotonic() < deadline, f"the dashboard did not show {text!r}"
            self.read_for(0.1)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def unread_bytes(self) -> int:
        return struct.unpack("i", fcntl.ioctl(self.master, termios.FIONREAD, b"\0\0\0\0"))[0]

    def stop_reading_until_full(self, timeout: float = 60.0) -> None:
        """Stop reading until the pty's buffer is full: the dashboard's writes now block."""
        deadline = time.monotonic() + timeout
        while self.unread_bytes() < 4095:
            assert time.monotonic() < deadline, "the dashboard stopped writing"
            time.sleep(0.02)

    def close_terminal(self) -> None:
        os.close(self.master)

    def exited(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def seconds_to_exit(self, reading: bool = False, bound: float = EXIT_BOUND_S) -> float:
        """Seconds until the process ended (polled; ``reading``: as a terminal that still reads);
        inf, and the process killed, past ``bound``."""
        start = time.monotonic()
        while self.exited() is None:
            if time.monotonic() - start > bound:
                self.kill()
                return float("inf")
            if reading:
                self.read_for(0.01)
            else:
                time.sleep(0.01)
        return time.monotonic() - start

    def kill(self) -> None:
        if self.exited() is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -signal.SIGKILL


@pytest.mark.slow
def test_dashboard_exits_when_its_terminal_closes_at_any_moment(served_run):
    """20 closes of the terminal at random moments — during start-up, while the dashboard
    draws, after it stopped reading for a while (its writes block) — and 20 exits."""
    rng = random.Random(24)
    times = []
    for _ in range(20):
        dashboard = Dashboard(served_run)
        try:
            dashboard.read_for(rng.uniform(0.0, 4.0))
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 1.5))  # the terminal stops reading before it closes
            # an exit at once would pass the bound below: the dashboard must still be running
            assert dashboard.exited() is None, ANSI.sub(b"", dashboard.output)[-800:].decode(errors="replace")
            dashboard.close_terminal()
            times.append(dashboard.seconds_to_exit())
        finally:
            dashboard.kill()
    assert all(t < EXIT_BOUND_S for t in times), f"seconds to exit after the terminal closed: {times}"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_ends_a_dashboard_whose_terminal_stopped_reading(served_run, signum):
    """The dashboard's writes block on a full terminal; SIGTERM or SIGHUP still ends it."""
    dashboard = Dashboard(served_run)
    try:
        dashboard.stop_reading_until_full()
        os.kill(dashboard.pid, signum)
        assert dashboard.seconds_to_exit() < EXIT_BOUND_S
        assert os.WEXITSTATUS(dashboard.status) == 128 + signum  # the watch ended it
    finally:
        dashboard.kill()
        os.close(dashboard.master)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("terminal", ["reading", "full"])
def test_signal_ends_the_dashboard_with_a_dialog_open(served_run, signum, terminal):
    dashboard = Dashboard(served_run)
    try:
        dashboard.read_until("CondLR")  # the dashboard of the run
        dashboard.type("q")
        dashboard.read_until("Detach (d)")  # the quit dialog
        if terminal == "full":
            dashboard.stop_reading_until_full()
        os.kill(dashboard.pid, signum)
        assert dashboard.seconds_to_exit(reading=terminal == "reading") < EXIT_BOUND_S
    finally:
        dashboard.kill()
        os.close(dashboard.master)


def test_a_hung_up_terminal_is_seen_as_gone():
    from rlr_tui.terminal_watch import stream_gone

    master, slave = pty.openpty()
    try:
        assert not stream_gone(slave)
        os.close(master)
        assert stream_gone(slave)
    finally:
        os.close(slave)
