"""The wire format: records survive a round trip, commands from the wire are checked field by
field, and the handshake names the version."""

import math

import pytest
from fake_client import scripted_snapshot

from rlr_engine.control.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    check_hello,
    command_from_dict,
    command_message,
    decode,
    encode,
    hello,
    snapshot_from_dict,
    snapshot_to_dict,
)
from rlr_engine.control.records import COMMANDS, AttackNow, Note, SetAdaptation, SetLearningRate, SetTau, Truncate


def test_a_snapshot_survives_the_wire_with_its_nested_records():
    snap = scripted_snapshot()
    snap = type(snap)(**{**snap.__dict__, "tau": math.inf, "last_checkpoint_step": 1600})
    back = snapshot_from_dict(decode(encode({"type": "snapshot", "snapshot": snapshot_to_dict(snap)}))["snapshot"])
    assert back == snap
    assert snapshot_from_dict(snapshot_to_dict(snap, with_events=False)).events == ()


def test_every_command_survives_the_wire():
    commands = [
        SetTau(0.5),
        SetLearningRate(0.01),
        Truncate(theta=0.2),
        Truncate(rank=3, layer="fc1"),
        AttackNow("fgsm", (0.0, 0.1)),
        SetAdaptation(beta=0.1, adapt_every=5),
        Note("rejected", "typed '-1': tau must be a number in [0, inf]"),
    ]
    commands += [cls() for cls in COMMANDS.values() if cls not in {type(c) for c in commands}]
    assert {type(c) for c in commands} == set(COMMANDS.values())
    for command in commands:
        assert command_from_dict(decode(encode(command_message("1", command)))["command"]) == command


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"kind": "warp"}, "unknown command kind 'warp'"),
        ({"kind": "set_tau"}, "missing field 'tau'"),
        ({"kind": "set_tau", "tau": "fast"}, "set_tau.tau = 'fast' is not allowed: expected a number"),
        ({"kind": "truncate", "rank": 2.5}, "truncate.rank = 2.5 is not allowed: expected an integer"),
        ({"kind": "pause", "now": True}, "unknown field(s) now"),
        ("pause", "must be an object"),
        ({"kind": "set_tau", "tau": 10**400}, "set_tau.tau = 1000000.* expected a number a float can hold"),
        ({"kind": "attack", "eps": [0, 10**400]}, "attack.eps = .* expected a list of numbers a float can hold"),
    ],
)
def test_commands_from_the_wire_are_checked_field_by_field(raw, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        command_from_dict(raw)


def test_the_handshake_names_the_version_and_refuses_another():
    check_hello(hello("test"))
    with pytest.raises(ProtocolError, match=f"engine speaks version {PROTOCOL_VERSION}, the client speaks 99"):
        check_hello({**hello("test"), "protocol": 99})
    with pytest.raises(ProtocolError, match="first message must be a hello"):
        check_hello({"type": "command"})
    with pytest.raises(ProtocolError, match="not a JSON line"):
        decode(b"{nope")


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"type": "command", "n": ' + b"1" * 5000 + b"}", "not a JSON line: Exceeds the limit (4300 digits)"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON line: nested too deeply"),
        (b'{"type": "hello", "client": "\xff"}', "not a JSON line"),
    ],
    ids=["5000-digits", "nested-100000-deep", "not-utf8"],
)
def test_a_line_python_cannot_parse_is_a_protocol_error(line, reason):
    with pytest.raises(ProtocolError) as refused:
        decode(line)
    assert str(refused.value).startswith(reason) and "sys.set_int_max_str_digits" not in str(refused.value)
