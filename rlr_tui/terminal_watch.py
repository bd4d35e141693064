"""The dashboard ends when its terminal does: a watchdog in the manner of dolphie's.

Closing a terminal (an SSH session that drops, ``tmux kill-server``, a closed window) sends the
dashboard SIGHUP and turns its terminal into a hung-up file: reads give EOF or EIO, writes EIO.
Textual writes the screen from a thread through a bounded queue; once that thread meets EIO, or
blocks on a terminal that stopped reading, the event loop blocks on the full queue and no
``app.exit()`` scheduled by a signal handler ever runs. So the ending is guaranteed from outside
the event loop:

- SIGHUP and SIGTERM ask the app to exit (the run goes on without this dashboard) and arm a
  deadline: a process still alive ``GRACE_S`` seconds later restores what it can of the
  terminal and ends with ``os._exit(128 + signal)``;
- a thread polls the standard streams every ``POLL_S`` seconds and treats a hung-up or broken
  one (POLLHUP or POLLERR: a closed terminal, the reading end of a pipe gone) as SIGHUP, for a
  dashboard the kernel's SIGHUP does not reach (not in the terminal's foreground, its own
  session).

Whatever screen, dialog or toast is open, the process is gone within ``POLL_S + GRACE_S`` of
its terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import termios
import threading
from collections.abc import Callable

POLL_S = 0.2
GRACE_S = 1.5
# What Textual's driver writes when it leaves application mode: the alternate screen, the hidden
# cursor, mouse reporting, bracketed paste, focus events and the Kitty keyboard protocol off.
TERMINAL_RESET = b"\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?1004l"
STREAMS = (0, 1, 2)
GONE = select.POLLHUP | select.POLLERR


def stream_gone(fd: int) -> bool:
    """Whether ``fd`` is a hung-up terminal or a pipe or socket whose other end is gone."""
    poller = select.poll()
    poller.register(fd, 0)  # no events asked for: only hang-ups and errors are reported
    try:
        return any(mask & GONE for _, mask in poller.poll(0))
    except OSError:
        return False


class TerminalWatch:
    """Arms the deadline on SIGHUP/SIGTERM and watches the standard streams (see the module).

    Args:
        request_exit: called with the signal number, on the main thread (a signal handler),
            to end the app the ordinary way; it must not block.
        grace_s: how long the ordinary way may take before the process is ended.
        poll_s: how often the standard streams are checked.
    """

    def __init__(self, request_exit: Callable[[int], None], grace_s: float = GRACE_S, poll_s: float = POLL_S) -> None:
        self.request_exit = request_exit
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.exit_code: int | None = None
        self._armed = threading.Event()
        self._streams = [fd for fd in STREAMS if _is_open(fd)]
        self._tty = next((fd for fd in STREAMS if fd in self._streams and os.isatty(fd)), None)
        self._tty_modes = _modes(self._tty)
        self._thread = threading.Thread(target=self._watch, name="rlr-terminal-watch", daemon=True)

    def install(self) -> TerminalWatch:
        """Handle SIGHUP and SIGTERM and start watching (call on the main thread)."""
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self._thread.start()
        return self

    def arm(self, code: int) -> None:
        """End the process with ``code`` unless it ends by itself within ``grace_s``."""
        if self.exit_code is None:
            self.exit_code = code
        self._armed.set()

    def _on_signal(self, signum: int, frame) -> None:
        self.arm(128 + signum)
        self.request_exit(signum)

    def _watch(self) -> None:
        while not self._armed.wait(self.poll_s):
            if any(stream_gone(fd) for fd in self._streams):
                self.arm(128 + signal.SIGHUP)
                # The handler runs on the main thread whenever the interpreter gets there; the
                # deadline below does not depend on it.
                os.kill(os.getpid(), signal.SIGHUP)
        threading.Event().wait(self.grace_s)
        self._restore_terminal()
        os._exit(self.exit_code if self.exit_code is not None else 1)

    def _restore_terminal(self) -> None:
        """Best effort, never blocking: the modes the terminal had, the normal screen, a cursor."""
        fd = self._tty
        if fd is None or stream_gone(fd):
            return
        with contextlib.suppress(OSError, termios.error):
            if self._tty_modes is not None:
                termios.tcsetattr(fd, termios.TCSANOW, self._tty_modes)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)  # a terminal that stopped reading
            try:
                os.write(fd, TERMINAL_RESET)
            finally:  # the shell shares this open file and expects it blocking
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _modes(fd: int | None) -> list | None:
    if fd is None:
        return None
    try:
        return termios.tcgetattr(fd)
    except termios.error:
        return None
