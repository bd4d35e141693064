"""The engine as its own process: detach, attach, signals, several clients, bad clients, a
killed engine. Real processes on synthetic data."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch
from helpers import attach_when_listening

from rlr_engine.control.client import EngineClient
from rlr_engine.control.detached import LaunchError, start_detached
from rlr_engine.control.protocol import MAX_LINE, PROTOCOL_VERSION, decode, encode, hello
from rlr_engine.control.records import SetTau
from rlr_engine.control.run_dirs import engine_alive, read_jsonl, run_info

FAST = [
    "--device",
    "cpu",
    "--set",
    "dataset=synthetic",
    "--set",
    "epochs=500",
    "--set",
    "snapshot_interval=0.05",
    "--set",
    "attack_every=0",
    "--set",
    "checkpoint_every=1",
    "--set",
    "eval_every=5",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def start(tmp_path, engine_processes, *extra):
    run_dir, pid = start_detached(["quickstart", *FAST, *extra, "--runs", str(tmp_path / "runs")])
    engine_processes.append(run_dir)
    return run_dir, pid


def connect(run_dir, client="rlr") -> EngineClient:
    """A client of the run's engine; the handshake's limit is a safety net for a loaded machine."""
    return EngineClient.connect(run_dir, client, timeout=60)


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_detach_prints_how_to_attach_and_the_engine_survives_sighup(tmp_path, engine_processes):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlr_engine.cli",
            "train",
            "quickstart",
            *FAST,
            "--runs",
            str(tmp_path / "runs"),
            "--detach",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    engine_processes.append(run_dir)
    assert f"rlr-tui --attach {run_dir}" in result.stdout.replace("\n", "")
    pid = json.loads((run_dir / "engine.json").read_text())["pid"]
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session: no terminal's SIGHUP
    client = connect(run_dir)
    wait_until(lambda: (client.latest() or None) and client.latest().step > 10, what="training")
    client.close()
    os.kill(pid, signal.SIGHUP)
    client = connect(run_dir)
    first = client.wait(lambda s: True, 60)
    snap = client.wait(lambda s: s.step > first.step + 5, 60)
    assert snap.step > first.step + 5  # still training
    assert engine_alive(run_dir) and snap.state == "running"
    assert not any("SIGHUP" in e["message"] for e in read_jsonl(run_dir / "events.jsonl"))
    assert snap.events[0].seq == 1 and "started quickstart" in snap.events[0].message  # history complete
    assert snap.curves["train_loss"][0][0] < 20
    client.close()


@pytest.mark.slow
def test_two_clients_see_one_application_of_each_command_and_rejections_reach_the_sender(tmp_path, engine_processes):
    run_dir, _ = start(tmp_path, engine_processes)
    a, b = connect(run_dir, "a"), connect(run_dir, "b")
    assert a.session != b.session
    wait_until(lambda: a.latest() and a.latest().state == "running", what="running")
    request = a.send(SetTau(0.5))
    bad = b.send(SetTau(-1.0))
    acks_a, acks_b = [], []

    def both_answered():
        acks_a.extend(a.take_acks())
        acks_b.extend(b.take_acks())
        return len(acks_a) >= 2 and len(acks_b) >= 2

    wait_until(both_answered, what="acknowledgements")
    for acks in (acks_a, acks_b):  # both dashboards see both answers, in order
        assert [(x.session, x.request_id, x.status) for x in acks] == [
            (a.session, request, "applied"),
            (b.session, bad, "rejected"),
        ]
    assert "tau must be" in acks_b[1].message and "τ: 0.1 → 0.5" in acks_a[0].message
    for client in (a, b):
        snap = client.wait(lambda s: s.tau == 0.5, 10)
        assert snap.tau == 0.5
    applied = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "applied" and "τ" in e["message"]]
    assert len(applied) == 1
    a.close()
    b.close()


@pytest.mark.slow
def test_bad_clients_get_errors_and_training_goes_on(tmp_path, engine_processes):
    run_dir, _ = start(tmp_path, engine_processes)
    path = str(run_dir / "control.sock")

    def raw(greet=True):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.settimeout(10)
        if greet:
            sock.sendall(encode(hello("test")))
        return sock

    good = connect(run_dir)
    before = wait_until(lambda: good.latest() and good.latest().step > 5 and good.latest(), what="training")
    silent = raw()  # hello, then never reads a byte
    never_hello = raw(greet=False)
    garbage = raw()
    garbage.sendall(b"this is not json\n")
    errors = read_until(garbage, lambda m: m["type"] == "error")
    assert errors[-1]["type"] == "error" and not errors[-1]["fatal"] and "not a JSON line" in errors[-1]["error"]
    garbage.sendall(b'{"type": "command", "id": "x1", "command": {"kind": "warp_speed"}}\n')
    acks = read_until(garbage, lambda m: m["type"] == "ack")
    assert acks[-1]["id"] == "x1" and acks[-1]["status"] == "rejected" and "unknown command" in acks[-1]["message"]
    garbage.sendall(b'{"type": "command", "command": {"kind": "pause"}}\n')  # no id: nothing to acknowledge
    assert "'id'" in read_until(garbage, lambda m: m["type"] == "error")[-1]["error"]
    oversized = raw()
    oversized.sendall(b"x" * (MAX_LINE + 10))
    answer = read_until(oversized, lambda m: m["type"] == "error" and m["fatal"])
    assert "over the limit" in answer[-1]["error"]
    assert oversized.recv(1 << 16) == b""  # and the engine closed that connection
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.connect(path)
    old.sendall(encode({"type": "hello", "protocol": PROTOCOL_VERSION + 1, "client": "future"}))
    refusal = decode(old.makefile("rb").readline())
    assert refusal["fatal"] and "protocol version mismatch" in refusal["error"]
    half = raw()
    half.shutdown(socket.SHUT_WR)  # half-closed: still gets the welcome and snapshots
    kinds = {m["type"] for m in read_until(half, lambda m: m["type"] == "snapshot")}
    assert {"welcome", "snapshot"} <= kinds
    # Training goes on while the bad clients stay connected (the silent one never reads).
    after = good.wait(lambda s: s.step > before.step + 100, 120)
    assert after.step > before.step + 100 and after.state == "running"
    notes = [e["message"] for e in read_jsonl(run_dir / "events.jsonl") if "control: client" in e["message"]]
    assert notes, "bad clients are logged in the events"
    for sock in (silent, never_hello, garbage, oversized, old, half):
        sock.close()
    good.close()


def read_until(sock, want, limit=200):
    """Messages from ``sock`` up to and including the first that ``want`` accepts."""
    buffer, seen = b"", []
    while len(seen) < limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return seen
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            seen.append(decode(line))
            if want(seen[-1]):
                return seen
    return seen


def greeted_socket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(10)
    sock.sendall(encode(hello("test")))
    return sock


@pytest.mark.slow
def test_a_huge_number_or_deep_nesting_gets_an_error_and_the_server_goes_on_serving(tmp_path, engine_processes):
    run_dir, _ = start(tmp_path, engine_processes)
    good = connect(run_dir)
    wait_until(lambda: good.latest() and good.latest().state == "running", what="running")
    sock = greeted_socket(run_dir / "control.sock")
    read_until(sock, lambda m: m["type"] == "snapshot")
    sock.sendall(b'{"type": "command", "id": "x", "n": ' + b"1" * 5000 + b"}\n")  # over Python's digit limit
    error = read_until(sock, lambda m: m["type"] == "error")[-1]
    assert not error["fatal"] and "not a JSON line" in error["error"] and "4300 digits" in error["error"]
    sock.sendall(b"[" * 100_000 + b"]" * 100_000 + b"\n")  # deeper than the parser recurses
    error = read_until(sock, lambda m: m["type"] == "error")[-1]
    assert not error["fatal"] and "nested too deeply" in error["error"]
    sock.sendall(b'{"type": "command", "id": "big", "command": {"kind": "set_tau", "tau": 1' + b"0" * 400 + b"}}\n")
    ack = read_until(sock, lambda m: m["type"] == "ack" and m["id"] == "big")[-1]
    assert ack["status"] == "rejected" and "set_tau.tau = 1000" in ack["message"] and "float" in ack["message"]
    assert len(ack["message"]) < 200
    request = good.send(SetTau(0.5))  # a second client is still served
    acks = wait_until(lambda: [a for a in good.take_acks() if a.request_id == request], what="the acknowledgement")
    assert acks[0].status == "applied" and "0.5" in acks[0].message
    sock.sendall(encode({"type": "command", "id": "same", "command": {"kind": "set_lr", "tau": 1}}))
    assert read_until(sock, lambda m: m["type"] == "ack" and m["id"] == "same")[-1]["status"] == "rejected"
    late = connect(run_dir)  # and new clients are welcome
    assert late.wait(lambda s: s.tau == 0.5, 30).tau == 0.5
    for client in (good, late):
        client.close()
    sock.close()


def test_an_unexpected_error_on_one_line_is_answered_and_logged_and_the_server_lives(tmp_path, monkeypatch):
    from rlr_engine.control.records import Snapshot, command_from_dict
    from rlr_engine.run import server as server_module

    class Engine:
        run_dir = tmp_path
        logged: list = []
        sent: list = []

        def latest(self):
            return Snapshot(version=1)

        def recent_events(self):
            return []

        def send(self, command, request_id="", session=0):
            self.sent.append(command)

        def log_event(self, kind, message):
            self.logged.append((kind, message))

    def fails_on_pause(raw):
        if raw.get("kind") == "pause":
            raise RuntimeError("a bug")
        return command_from_dict(raw)

    monkeypatch.setattr(server_module, "command_from_dict", fails_on_pause)
    engine = Engine()
    control = server_module.ControlServer(engine, tmp_path / "control.sock").start()
    try:
        sock = greeted_socket(tmp_path / "control.sock")
        read_until(sock, lambda m: m["type"] == "snapshot")
        sock.sendall(encode({"type": "command", "id": "1", "command": {"kind": "pause"}}))
        error = read_until(sock, lambda m: m["type"] == "error")[-1]
        assert not error["fatal"] and "could not handle this line (RuntimeError: a bug)" in error["error"]
        assert (
            "error",
            "control: client 1: the engine could not handle this line (RuntimeError: a bug)",
        ) in engine.logged
        sock.sendall(encode({"type": "command", "id": "2", "command": {"kind": "set_tau", "tau": 0.5}}))
        other = greeted_socket(tmp_path / "control.sock")
        assert read_until(other, lambda m: m["type"] == "welcome")[-1]["session"] == 2
        wait_until(lambda: engine.sent, 10, "the command after the failed line")
        assert engine.sent == [SetTau(0.5)] and control._thread.is_alive()
        sock.close()
        other.close()
    finally:
        control.close()


@pytest.mark.slow
def test_kill_9_is_reported_runs_says_dead_and_resume_continues(tmp_path, engine_processes):
    run_dir, pid = start(tmp_path, engine_processes)
    client = connect(run_dir)
    snap = client.wait(lambda s: s.last_checkpoint_step is not None and s.step > s.last_checkpoint_step, 120)
    checkpoint_step = snap.last_checkpoint_step
    os.kill(pid, signal.SIGKILL)
    # Noticed by the connection closing (the kernel closes a killed process's sockets), not by a
    # silence timing out.
    wait_until(lambda: client.engine_died, what="the client to notice")
    assert client.lost_reason.startswith(("the connection closed", "connection lost")), client.lost_reason
    assert (run_dir / "control.sock").exists()  # a stale socket is left behind …
    info = run_info(run_dir)
    assert info.state == "dead" and info.resumable  # … and not trusted
    last_seq = max(e["seq"] for e in read_jsonl(run_dir / "events.jsonl"))
    start_detached(["--resume", str(run_dir)])
    resumed = connect(run_dir)
    first = resumed.wait(lambda s: s.state == "running", 60)
    assert first.step >= checkpoint_step
    later = resumed.wait(lambda s: s.step > first.step + 5, 60)
    assert later.step > first.step + 5
    assert later.curves["train_loss"][0][0] < checkpoint_step  # the curve before the kill is kept
    seqs = [e["seq"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and max(seqs) > last_seq
    assert any("resumed quickstart" in e.message for e in resumed.latest().events)
    resumed.close()


@pytest.mark.slow
def test_socket_and_run_directory_are_private(tmp_path, engine_processes):
    run_dir, _ = start(tmp_path, engine_processes)
    assert stat.S_IMODE(os.stat(run_dir / "control.sock").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700


def test_the_dashboard_imports_no_torch():
    code = (
        "import sys, rlr_tui.app, rlr_tui.screens.dashboard, rlr_tui.screens.picker, rlr_engine.control.client, "
        "rlr_engine.control.run_dirs, rlr_engine.control.protocol, rlr_engine.control.records; rlr_tui.app.RlrApp(); "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
@pytest.mark.slow
def test_headless_train_stops_cleanly_on_a_signal(tmp_path, signum, code):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlr_engine.cli", "train", "quickstart", *FAST, "--runs", str(tmp_path / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        run_dir = wait_until(lambda: next((tmp_path / "runs").glob("*/control.sock"), None), 300, "the socket").parent
        client = connect(run_dir)
        client.wait(lambda s: s.step > 40, 120)
        client.close()
        proc.send_signal(signum)
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == code, proc.stderr.read()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "stopped" and summary["steps"] > 40
    assert summary["last_checkpoint_step"] == summary["steps"]  # the final checkpoint: no work lost
    events = list(read_jsonl(run_dir / "events.jsonl"))
    assert any(e["kind"] == "info" and e["message"].startswith("stopped at step") for e in events)
    # dashboards are told what stopped the run
    assert any(
        f"({signal.Signals(signum).name} received): writing a final checkpoint" in e["message"] for e in events
    ), [e["message"] for e in events]
    assert not (run_dir / "control.sock").exists() and not engine_alive(run_dir)


@pytest.mark.slow
def test_a_failed_start_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LaunchError, match="not available"):
        start_detached(
            ["mnist-lenet5-dense", "--device", "cpu", "--set", f"data_dir={tmp_path}", "--set", "download=false"]
            + ["--runs", "runs"]
        )
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none; this machine has a GPU")
@pytest.mark.slow
def test_a_start_on_cuda_without_a_gpu_fails_and_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LaunchError, match="no CUDA GPU"):
        start_detached(["quickstart", "--device", "cuda", "--runs", "runs"])
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_resumed_run_reports_the_tau_set_while_it_ran_not_the_presets(tmp_path, engine_processes):
    run_dir, pid = start(tmp_path, engine_processes)  # the preset's τ is 0.1
    client = connect(run_dir)
    client.wait(lambda s: s.state == "running", 60)
    client.send(SetTau(0.5))
    assert client.wait(lambda s: s.tau == 0.5, 30).tau == 0.5
    client.close()
    os.kill(pid, signal.SIGTERM)  # the final checkpoint holds τ = 0.5
    wait_until(lambda: not engine_alive(run_dir) and (run_dir / "summary.json").is_file(), 60, "the stop")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlr_engine.cli", "train", "--resume", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        resumed = attach_when_listening(run_dir, proc)
        assert resumed.wait(lambda s: s.state == "running", 60).tau == 0.5
        resumed.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    console_line = next(line for line in out.splitlines() if line.startswith("quickstart — "))
    assert "CondLR τ=0.5" in console_line, out
    resumed_events = [e["message"] for e in read_jsonl(run_dir / "events.jsonl") if e["message"].startswith("resumed")]
    assert resumed_events and "(CondLR τ=0.5)" in resumed_events[-1], resumed_events
