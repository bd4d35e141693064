"""A client of an engine's control socket, for dashboards and ``rlr runs``. Torch-free.

``EngineClient.connect(run_dir)`` does the handshake; a reader thread then keeps only the newest
snapshot and queues acknowledgements and events, so whoever polls ``latest()``/``take_acks()``
(a Textual ``set_interval``) never blocks and never lags behind.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

from rlr_engine.control.protocol import (
    MAX_LINE,
    ProtocolError,
    ack_from_message,
    command_message,
    decode,
    encode,
    event_from_dict,
    hello,
    snapshot_from_dict,
)
from rlr_engine.control.records import RECENT_EVENTS, Ack, Command, Event, Snapshot
from rlr_engine.control.run_files import CONTROL_SOCKET
from rlr_engine.control.unix_socket import socket_address

MAX_ACKS = 200


class EngineUnavailable(Exception):
    """No engine answers on the run's control socket (not running, or gone)."""


class EngineClient:
    """One connection to one engine. ``session`` is this client's number (acks carry it)."""

    def __init__(self, sock: socket.socket, welcome: dict, buffer: bytes, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.session: int = int(welcome["session"])
        self.pid: int = int(welcome["pid"])
        self._sock = sock
        self._buffer = bytearray(buffer)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._events: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._event_seqs: set[int] = set()
        self._acks: deque[Ack] = deque(maxlen=MAX_ACKS)
        self._errors: deque[str] = deque(maxlen=50)
        self._generation = 0
        self._ids = itertools.count(1)
        self.connected = True
        self.closed = False  # closed by this side (detached)
        self.ended_state: str | None = None  # set when the engine said the run ended
        self.lost_reason = ""
        for raw in welcome.get("events", ()):
            self._add_event(event_from_dict(raw))
        self._reader = threading.Thread(target=self._read_loop, name="rlr-client", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, run_dir: str | Path, client: str = "rlr", timeout: float = 5.0) -> EngineClient:
        """Connect and shake hands; EngineUnavailable when nobody listens, ProtocolError when the
        engine refuses (another protocol version)."""
        run_dir = Path(run_dir)
        path = run_dir / CONTROL_SOCKET
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with socket_address(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            sock.close()
            raise EngineUnavailable(f"{run_dir}: no engine is running (no {CONTROL_SOCKET})") from None
        except (ConnectionRefusedError, OSError) as error:
            sock.close()
            raise EngineUnavailable(
                f"{run_dir}: no engine answers on {CONTROL_SOCKET} ({error}); the run is not running"
            ) from None
        try:
            sock.sendall(encode(hello(client)))
            buffer = bytearray()
            deadline = time.monotonic() + timeout
            while b"\n" not in buffer:
                if time.monotonic() > deadline:
                    raise EngineUnavailable(f"{run_dir}: the engine did not answer within {timeout:g} s")
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise EngineUnavailable(f"{run_dir}: the engine closed the connection during the handshake")
                buffer += chunk
            line, _, rest = bytes(buffer).partition(b"\n")
            message = decode(line)
            if message["type"] == "error":
                raise ProtocolError(f"{run_dir}: the engine refused the connection: {message.get('error')}")
            if message["type"] != "welcome":
                raise ProtocolError(f"{run_dir}: expected a welcome, got {message['type']!r}")
        except (OSError, ProtocolError, EngineUnavailable) as error:
            sock.close()
            if isinstance(error, OSError):
                raise EngineUnavailable(f"{run_dir}: handshake failed: {error}") from None
            raise
        sock.settimeout(None)
        return cls(sock, message, rest, run_dir)

    # -- for the UI thread -----------------------------------------------------------------------
    def latest(self) -> Snapshot | None:
        """The newest snapshot with the events received so far; ``version`` counts what this
        client has received (snapshots and events), so a redraw is needed when it changes."""
        with self._lock:
            if self._snapshot is None:
                return None
            return replace(self._snapshot, events=tuple(self._events), version=self._generation)

    def take_acks(self) -> list[Ack]:
        """Acknowledgements received since the last call (of every client's commands: compare
        ``ack.session`` with ``self.session`` to find this client's own)."""
        with self._lock:
            acks = list(self._acks)
            self._acks.clear()
            return acks

    def take_errors(self) -> list[str]:
        with self._lock:
            errors = list(self._errors)
            self._errors.clear()
            return errors

    def send(self, command: Command) -> str:
        """Send a command; returns its request id (the acknowledgement carries it)."""
        request_id = str(next(self._ids))
        data = encode(command_message(request_id, command))
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as error:
            self._lost(f"send failed: {error}")
            raise EngineUnavailable(f"the engine is gone: {error}") from None
        return request_id

    def close(self) -> None:
        self.closed = True
        self.connected = False
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def wait(self, predicate, timeout: float) -> Snapshot | None:
        """Poll until predicate(latest snapshot) holds or the connection ends; the last snapshot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.latest()
            if snap is not None and predicate(snap):
                return snap
            if not self.connected:
                break
            time.sleep(0.02)
        return self.latest()

    # -- the reader thread -----------------------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            self._process_buffer()
            while self.connected:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    self._lost("the connection closed without the run ending")
                    return
                self._buffer += chunk
                if len(self._buffer) > 4 * MAX_LINE:
                    self._lost("the engine sent a line over the limit")
                    return
                self._process_buffer()
        except OSError as error:
            self._lost(f"connection lost: {error}")

    def _process_buffer(self) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            try:
                self._handle(decode(line))
            except (ProtocolError, KeyError, TypeError, ValueError) as error:
                with self._lock:
                    self._errors.append(f"unreadable message from the engine: {error}")

    def _handle(self, message: dict) -> None:
        kind = message["type"]
        with self._lock:
            if kind == "snapshot":
                self._snapshot = snapshot_from_dict(message["snapshot"])
                self._generation += 1
            elif kind == "event":
                self._add_event(event_from_dict(message["event"]))
            elif kind == "ack":
                self._acks.append(ack_from_message(message))
            elif kind == "error":
                self._errors.append(str(message.get("error")))
            elif kind == "end":
                self.ended_state = str(message.get("state"))

    def _add_event(self, event: Event) -> None:
        if event.seq in self._event_seqs:
            return
        if len(self._events) == self._events.maxlen:
            self._event_seqs.discard(self._events[0].seq)
        self._events.append(event)
        self._event_seqs.add(event.seq)
        self._generation += 1

    def _lost(self, reason: str) -> None:
        with self._lock:
            if self.connected:
                self.lost_reason = reason
            self.connected = False
            self._generation += 1

    @property
    def engine_died(self) -> bool:
        """The connection ended without the engine saying the run ended: it was killed."""
        return not self.connected and not self.closed and self.ended_state is None
