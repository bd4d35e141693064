"""The control protocol between an engine process and its clients (dashboards, ``rlr runs``).

Transport: the Unix domain socket ``control.sock`` in the run directory. Framing: one JSON object
per line (UTF-8, ``\\n``-terminated, at most ``MAX_LINE`` bytes). Floats that JSON cannot spell
(τ = inf, a NaN loss) are written as ``Infinity``/``NaN``, as Python's json module does.

Every message has a ``type``. The shape follows Jupyter's kernel messaging, smaller:

client → engine
  ``{"type": "hello", "protocol": 1, "client": "rlr-tui"}``  — first line, always
  ``{"type": "command", "id": "7", "command": {"kind": "set_tau", "tau": 0.5}}``

engine → client
  ``{"type": "welcome", "protocol": 1, "session": 3, "pid": …, "run_dir": …, "events": [...]}``
  ``{"type": "snapshot", "snapshot": {...}}``  — at most ``MAX_SNAPSHOT_HZ`` a second; newest wins
  ``{"type": "event", "event": {...}}``
  ``{"type": "ack", "id": "7", "session": 3, "kind": "set_tau", "status": "applied"|"rejected",
     "message": "τ: 0.1 → 0.5"}``  — to every client, so all dashboards see every change;
     ``session`` and ``id`` name the request it answers
  ``{"type": "error", "error": "…", "fatal": false}``  — a line the engine could not use
     (``fatal``: the engine closes the connection after it, e.g. a protocol version mismatch)
  ``{"type": "end", "state": "stopped"}``  — the run ended; the engine closes the connection

This module is torch-free: the dashboard imports it. Records cross the wire through the
functions here and nowhere else (``snapshot_to_dict``/``snapshot_from_dict`` and the nested ones).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from rlr_engine.control.records import Ack, AttackResult, Command, Event, LayerStats, Snapshot, command_from_dict
from rlr_engine.core.validation import parse_float

PROTOCOL_VERSION = 1
# The session of the commands an engine gives itself (a stop on a signal); clients' start at 1.
ENGINE_SESSION = 0
MAX_LINE = 1 << 20  # bytes, newline included
MAX_SNAPSHOT_HZ = 4.0

__all__ = [
    "MAX_LINE",
    "MAX_SNAPSHOT_HZ",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "ack_from_message",
    "ack_message",
    "attack_result_from_dict",
    "attack_result_to_dict",
    "check_hello",
    "command_from_dict",
    "command_message",
    "decode",
    "encode",
    "error_message",
    "event_from_dict",
    "event_to_dict",
    "hello",
    "layer_stats_from_dict",
    "layer_stats_to_dict",
    "snapshot_from_dict",
    "snapshot_to_dict",
    "welcome",
]


class ProtocolError(ValueError):
    """A line that is not a valid message, or a peer speaking another protocol version."""


# -- framing --------------------------------------------------------------------------------
def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def decode(line: bytes) -> dict[str, Any]:
    """One message from one line (without or with its newline)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line of {len(line)} bytes is over the limit of {MAX_LINE}")
    try:
        message = json.loads(line.decode("utf-8"), parse_float=parse_float)  # 1e400 is no ∞
    except RecursionError:
        raise ProtocolError("not a JSON line: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise ProtocolError(f"not a JSON line: {str(error).partition('; use sys.')[0]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


# -- handshake ------------------------------------------------------------------------------
def hello(client: str) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client}


def check_hello(message: dict[str, Any]) -> None:
    if message.get("type") != "hello":
        raise ProtocolError(
            f"the first message must be a hello naming the protocol version "
            f"({PROTOCOL_VERSION}), got type {message.get('type')!r}"
        )
    if message.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: this engine speaks version {PROTOCOL_VERSION}, "
            f"the client speaks {message.get('protocol')!r}; use the same rlr version for both"
        )


def welcome(session: int, pid: int, run_dir: str, events: list[Event]) -> dict[str, Any]:
    return {
        "type": "welcome",
        "protocol": PROTOCOL_VERSION,
        "session": session,
        "pid": pid,
        "run_dir": run_dir,
        "events": [event_to_dict(e) for e in events],
    }


def error_message(error: str, fatal: bool = False, request_id: str | None = None) -> dict[str, Any]:
    message = {"type": "error", "error": error, "fatal": fatal}
    if request_id is not None:
        message["id"] = request_id
    return message


# -- commands and their acknowledgements ------------------------------------------------------
def command_message(request_id: str, command: Command) -> dict[str, Any]:
    return {"type": "command", "id": request_id, "command": command.to_dict()}


def ack_message(ack: Ack) -> dict[str, Any]:
    return {
        "type": "ack",
        "id": ack.request_id,
        "session": ack.session,
        "kind": ack.kind,
        "status": ack.status,
        "message": ack.message,
    }


def ack_from_message(message: dict[str, Any]) -> Ack:
    return Ack(
        str(message["id"]),
        int(message["session"]),
        str(message["kind"]),
        str(message["status"]),
        str(message["message"]),
    )


# -- records ----------------------------------------------------------------------------------
def event_to_dict(event: Event) -> dict[str, Any]:
    return dataclasses.asdict(event)


def event_from_dict(raw: dict[str, Any]) -> Event:
    return Event(int(raw["seq"]), int(raw["step"]), float(raw["time"]), str(raw["kind"]), str(raw["message"]))


def attack_result_to_dict(result: AttackResult) -> dict[str, Any]:
    return {
        "step": result.step,
        "epoch": result.epoch,
        "attack": result.attack,
        "eps": list(result.eps),
        "accuracy": list(result.accuracy),
        "samples": result.samples,
        "seed": result.seed,
    }


def attack_result_from_dict(raw: dict[str, Any]) -> AttackResult:
    """(Results recorded before ``samples`` and ``seed`` were read with neither.)"""
    return AttackResult(
        int(raw["step"]),
        int(raw["epoch"]),
        str(raw["attack"]),
        tuple(float(e) for e in raw["eps"]),
        tuple(float(a) for a in raw["accuracy"]),
        int(raw.get("samples", 0)),
        None if raw.get("seed") is None else int(raw["seed"]),
    )


def layer_stats_to_dict(stats: LayerStats) -> dict[str, Any]:
    return {
        "name": stats.name,
        "shape": list(stats.shape),
        "rank": stats.rank,
        "full_rank": stats.full_rank,
        "sigma": list(stats.sigma),
        "low_rank": stats.low_rank,
    }


def layer_stats_from_dict(raw: dict[str, Any]) -> LayerStats:
    return LayerStats(
        str(raw["name"]),
        (int(raw["shape"][0]), int(raw["shape"][1])),
        int(raw["rank"]),
        int(raw["full_rank"]),
        tuple(float(s) for s in raw["sigma"]),
        bool(raw["low_rank"]),
    )


_NESTED = {"curves", "layers", "adversarial", "adversarial_history", "events"}


def snapshot_to_dict(snapshot: Snapshot, with_events: bool = True) -> dict[str, Any]:
    """Plain JSON-able dict of a snapshot. Without events when they travel on their own."""
    raw = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(Snapshot) if f.name not in _NESTED}
    raw["curves"] = {name: [list(point) for point in series] for name, series in snapshot.curves.items()}
    raw["layers"] = [layer_stats_to_dict(s) for s in snapshot.layers]
    raw["adversarial"] = None if snapshot.adversarial is None else attack_result_to_dict(snapshot.adversarial)
    raw["adversarial_history"] = [attack_result_to_dict(r) for r in snapshot.adversarial_history]
    raw["events"] = [event_to_dict(e) for e in snapshot.events] if with_events else []
    return raw


def snapshot_from_dict(raw: dict[str, Any]) -> Snapshot:
    known = {f.name for f in dataclasses.fields(Snapshot)}
    plain = {k: v for k, v in raw.items() if k in known and k not in _NESTED}
    for key in ("tau",):
        if plain.get(key) is None:
            plain[key] = math.inf
    return Snapshot(
        **plain,
        curves={name: tuple((int(x), float(y)) for x, y in series) for name, series in raw.get("curves", {}).items()},
        layers=tuple(layer_stats_from_dict(s) for s in raw.get("layers", ())),
        adversarial=None if raw.get("adversarial") is None else attack_result_from_dict(raw["adversarial"]),
        adversarial_history=tuple(attack_result_from_dict(r) for r in raw.get("adversarial_history", ())),
        events=tuple(event_from_dict(e) for e in raw.get("events", ())),
    )
