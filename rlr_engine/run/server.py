"""The control server: one thread in the engine process that serves the engine on a Unix socket
(protocol.py describes the messages).

It never slows training and nothing in it grows without bound:

- snapshots are encoded once per published version, at most ``MAX_SNAPSHOT_HZ`` a second, and
  each client holds at most one waiting (newest wins) besides the bytes already in flight;
- events and acknowledgements are small; a client whose backlog of them passes
  ``MAX_BACKLOG_BYTES`` is not reading and is dropped;
- a line over ``MAX_LINE`` bytes, a wrong protocol version, too many bad lines or too many
  clients get an error and the connection is closed; a malformed line or an unknown command gets
  an error (or a rejected acknowledgement carrying its id) and the client stays; so does a line
  that meets an unexpected error, which is also logged: one line never ends this thread;
- a client that half-closes keeps receiving until it goes away.

The engine thread reaches this thread only through ``event()``/``ack()``, which append to a
deque and wake the selector: they never block.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlr_engine.control.protocol import (
    ENGINE_SESSION,
    MAX_LINE,
    MAX_SNAPSHOT_HZ,
    ProtocolError,
    ack_message,
    check_hello,
    command_from_dict,
    decode,
    encode,
    error_message,
    event_to_dict,
    snapshot_to_dict,
    welcome,
)
from rlr_engine.control.records import Ack, Event
from rlr_engine.control.unix_socket import socket_address

if TYPE_CHECKING:
    from rlr_engine.run.engine import Engine

MAX_BACKLOG_BYTES = 4 << 20
MAX_CLIENTS = 32
MAX_BAD_LINES = 100
HELLO_TIMEOUT_S = 30.0
CLOSE_GRACE_S = 1.0


@dataclass
class _Client:
    sock: socket.socket
    session: int
    connected_at: float
    inbox: bytearray = field(default_factory=bytearray)
    in_flight: bytearray = field(default_factory=bytearray)
    backlog: deque = field(default_factory=deque)  # encoded events, acks and errors
    backlog_bytes: int = 0
    snapshot: bytes | None = None  # newest wins
    greeted: bool = False
    reading: bool = True
    closing_since: float | None = None
    bad_lines: int = 0

    def queue(self, data: bytes) -> None:
        self.backlog.append(data)
        self.backlog_bytes += len(data)

    @property
    def wants_write(self) -> bool:
        return bool(self.in_flight or self.backlog or self.snapshot)


class ControlServer:
    """Serves ``engine`` on the Unix socket ``path`` (created with mode 0600)."""

    def __init__(self, engine: Engine, path: str | Path) -> None:
        self.engine = engine
        self.path = Path(path)
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._pending: deque[dict[str, Any]] = deque()  # from the engine thread
        self._clients: dict[int, _Client] = {}
        self._next_session = ENGINE_SESSION + 1
        self._snapshot_version = -1
        self._snapshot_sent_at = 0.0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._end_message: dict[str, Any] | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        """Bind (replacing a stale socket file: the caller holds the run's engine lock), listen,
        and serve in a daemon thread."""
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            with socket_address(self.path) as address:
                listener.bind(address)
        except OSError:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="rlr-control", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Send every client the final snapshot and an ``end`` message, give them ``timeout``
        seconds to receive it, then close and remove the socket."""
        snap = self.engine.latest()
        self._end_message = {"type": "end", "state": snap.state}
        self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self.path.unlink(missing_ok=True)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # -- from the engine thread (EngineListener) -------------------------------------------------
    def event(self, event: Event) -> None:
        self._pending.append({"type": "event", "event": event_to_dict(event)})
        self._wake()

    def ack(self, ack: Ack) -> None:
        self._pending.append(ack_message(ack))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (the pipe is full) or shutting down

    # -- the thread ------------------------------------------------------------------------------
    def _serve(self) -> None:
        interval = 1.0 / MAX_SNAPSHOT_HZ
        try:
            while True:
                for key, mask in self._selector.select(timeout=interval):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        client = self._clients.get(key.data)
                        if client is None:
                            continue
                        if mask & selectors.EVENT_READ:
                            self._read(client)
                        if mask & selectors.EVENT_WRITE and client.session in self._clients:
                            self._write(client)
                self._distribute_pending()
                if self._closing:
                    self._send_end()
                    if self._flush_all(deadline=time.monotonic() + CLOSE_GRACE_S):
                        return
                    return
                self._distribute_snapshot()
                self._housekeeping()
        finally:
            for client in list(self._clients.values()):
                self._close_client(client)
            self._selector.close()
            if self._listener is not None:
                self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self) -> None:
        assert self._listener is not None, "accepting before start()"
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            client = _Client(sock, self._next_session, time.monotonic())
            self._next_session += 1
            self._clients[client.session] = client
            self._selector.register(sock, selectors.EVENT_READ, client.session)
            if len(self._clients) > MAX_CLIENTS:
                self._refuse(client, f"too many clients (at most {MAX_CLIENTS})")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _distribute_pending(self) -> None:
        while self._pending:
            data = encode(self._pending.popleft())
            for client in list(self._clients.values()):
                if client.greeted and client.closing_since is None:
                    client.queue(data)
                    self._want_write(client)

    def _distribute_snapshot(self, force: bool = False) -> None:
        snap = self.engine.latest()
        now = time.monotonic()
        if snap.version == self._snapshot_version:
            return
        if not force and now - self._snapshot_sent_at < 1.0 / MAX_SNAPSHOT_HZ:
            return
        self._snapshot_version, self._snapshot_sent_at = snap.version, now
        if not any(c.greeted for c in self._clients.values()):
            return
        data = encode({"type": "snapshot", "snapshot": snapshot_to_dict(snap, with_events=False)})
        for client in list(self._clients.values()):
            if client.greeted and client.closing_since is None:
                client.snapshot = data
                self._want_write(client)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for client in list(self._clients.values()):
            if client.backlog_bytes > MAX_BACKLOG_BYTES:
                self._drop(client, f"not reading (backlog over {MAX_BACKLOG_BYTES >> 20} MiB)")
            elif not client.greeted and client.closing_since is None and now - client.connected_at > HELLO_TIMEOUT_S:
                self._refuse(client, f"no hello within {HELLO_TIMEOUT_S:g} s")
            elif client.closing_since is not None and (
                not client.wants_write or now - client.closing_since > CLOSE_GRACE_S
            ):
                self._close_client(client)

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(client, f"connection error: {error}", log=False)
            return
        if not data:  # the client closed its side: it may still read what we send
            client.reading = False
            self._update_interest(client)
            if client.closing_since is None and not client.wants_write:
                self._close_client(client)
            return
        client.inbox += data
        while client.session in self._clients and client.closing_since is None:
            end = client.inbox.find(b"\n")
            if end < 0:
                if len(client.inbox) > MAX_LINE:
                    self._refuse(client, f"line over the limit of {MAX_LINE} bytes")
                return
            line = bytes(client.inbox[:end])
            del client.inbox[: end + 1]
            if len(line) + 1 > MAX_LINE:
                self._refuse(client, f"line over the limit of {MAX_LINE} bytes")
                return
            if line.strip():
                try:
                    self._handle_line(client, line)
                except Exception as error:  # one line must never end the server for every client
                    self._line_failed(client, error)

    def _handle_line(self, client: _Client, line: bytes) -> None:
        try:
            message = decode(line)
        except ProtocolError as error:
            self._bad_line(client, str(error))
            return
        if not client.greeted:
            try:
                check_hello(message)
            except ProtocolError as error:
                self._refuse(client, str(error))
                return
            client.greeted = True
            client.queue(
                encode(welcome(client.session, os.getpid(), str(self.engine.run_dir), self.engine.recent_events()))
            )
            snap = self.engine.latest()
            client.snapshot = encode({"type": "snapshot", "snapshot": snapshot_to_dict(snap, with_events=False)})
            self._want_write(client)
            return
        if message["type"] != "command":
            self._bad_line(client, f"unknown message type {message['type']!r}; a client sends hello, then commands")
            return
        request_id = message.get("id")
        if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
            self._bad_line(client, "a command needs an 'id' (string or integer) for its acknowledgement")
            return
        request_id = str(request_id)
        try:
            command = command_from_dict(message.get("command"))
        except ValueError as error:
            kind = message.get("command", {}).get("kind") if isinstance(message.get("command"), dict) else None
            client.queue(encode(ack_message(Ack(request_id, client.session, str(kind), "rejected", str(error)))))
            self._want_write(client)
            self._note_bad(client, f"rejected a command it could not read: {error}")
            return
        self.engine.send(command, request_id=request_id, session=client.session)

    def _line_failed(self, client: _Client, error: Exception) -> None:
        """A line that met an unexpected error: the client gets an error message, the run's events
        record it (the traceback goes to stderr, the engine's log) and the server goes on."""
        try:
            traceback.print_exc(file=sys.stderr)
        except (OSError, ValueError):  # no stderr to write to
            pass
        detail = f"{type(error).__name__}: {error}"
        reason = f"the engine could not handle this line ({detail[:200]})"
        self.engine.log_event("error", f"control: client {client.session}: {reason}")
        if client.session in self._clients and client.closing_since is None:
            self._bad_line(client, reason)

    def _bad_line(self, client: _Client, reason: str) -> None:
        client.queue(encode(error_message(reason)))
        self._want_write(client)
        self._note_bad(client, reason)

    def _note_bad(self, client: _Client, reason: str) -> None:
        client.bad_lines += 1
        if client.bad_lines == 1:
            self.engine.log_event("warning", f"control: client {client.session}: {reason}")
        if client.bad_lines >= MAX_BAD_LINES:
            self._refuse(client, f"{MAX_BAD_LINES} bad lines")

    # -- writing ---------------------------------------------------------------------------------
    def _want_write(self, client: _Client) -> None:
        self._update_interest(client)

    def _update_interest(self, client: _Client) -> None:
        if client.session not in self._clients:
            return
        events = (selectors.EVENT_READ if client.reading and client.closing_since is None else 0) | (
            selectors.EVENT_WRITE if client.wants_write else 0
        )
        try:
            if events:
                self._selector.modify(client.sock, events, client.session)
            else:
                self._selector.unregister(client.sock)
                self._selector.register(client.sock, selectors.EVENT_READ, client.session)
        except (KeyError, ValueError, OSError):
            pass

    def _write(self, client: _Client) -> None:
        if not client.in_flight:
            while client.backlog:
                client.in_flight += client.backlog.popleft()
            client.backlog_bytes = 0
            if client.snapshot is not None:
                client.in_flight += client.snapshot
                client.snapshot = None
        try:
            sent = client.sock.send(client.in_flight)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(client, f"connection lost: {error}", log=False)
            return
        del client.in_flight[:sent]
        if client.closing_since is not None and not client.wants_write:
            self._close_client(client)
            return
        self._update_interest(client)

    def _flush_all(self, deadline: float) -> bool:
        """Write what is queued until done or ``deadline``; True when everything went out."""
        while time.monotonic() < deadline:
            busy = [c for c in self._clients.values() if c.wants_write]
            if not busy:
                return True
            for key, mask in self._selector.select(timeout=0.05):
                client = self._clients.get(key.data) if isinstance(key.data, int) else None
                if client is not None and mask & selectors.EVENT_WRITE:
                    self._write(client)
        return False

    def _send_end(self) -> None:
        self._distribute_snapshot(force=True)
        data = encode(self._end_message or {"type": "end", "state": self.engine.latest().state})
        for client in self._clients.values():
            if client.greeted:
                client.queue(data)
                self._want_write(client)

    # -- closing ---------------------------------------------------------------------------------
    def _refuse(self, client: _Client, reason: str) -> None:
        """Answer a fatal error, then close once it is sent (or after a grace period)."""
        client.queue(encode(error_message(reason, fatal=True)))
        client.snapshot = None
        client.closing_since = time.monotonic()
        client.inbox.clear()
        self._update_interest(client)
        self.engine.log_event("warning", f"control: closed client {client.session}: {reason}")

    def _drop(self, client: _Client, reason: str, log: bool = True) -> None:
        if log:
            self.engine.log_event("warning", f"control: dropped client {client.session}: {reason}")
        self._close_client(client)

    def _close_client(self, client: _Client) -> None:
        if self._clients.pop(client.session, None) is None:
            return
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
