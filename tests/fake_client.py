"""A deterministic stand-in for an engine process, for UI tests: a client with scripted
snapshots and acknowledgements that records the commands it is sent."""

from __future__ import annotations

import math
from pathlib import Path

from rlr_engine.control.records import Ack, AttackResult, Event, LayerStats, Snapshot


def scripted_snapshot(version: int = 1) -> Snapshot:
    steps = range(0, 2000, 20)
    layers = (
        LayerStats("conv1", (20, 25), 4, 20, tuple(1.2 - 0.02 * i for i in range(4)), True),
        LayerStats("conv2", (50, 500), 10, 50, tuple(1.0 - 0.01 * i for i in range(10)), True),
        LayerStats("fc1", (500, 800), 100, 500, tuple(0.8 - 0.001 * i for i in range(100)), True),
        LayerStats("fc2", (10, 500), 10, 10, tuple(3.0 / (1 + i) for i in range(10)), False),
    )
    attacks = tuple(
        AttackResult(
            s,
            s // 400,
            "fgsm",
            (0.0, 0.02, 0.04, 0.06),
            (0.8 + 0.01 * k, 0.6 + 0.01 * k, 0.45 + 0.01 * k, 0.3 + 0.01 * k),
        )
        for k, s in enumerate((400, 800, 1200, 1600))
    )
    events = (
        Event(1, 0, 0.0, "info", "started fake (CondLR τ=0.1) on cpu at step 0"),
        Event(2, 800, 0.0, "truncation", "fc1: rank 160 → 100 (‖ΔW‖_F = 0.31)"),
        Event(3, 1200, 0.0, "rejected", "set_tau: tau must be a number in [0, inf], got -1.0"),
    )
    return Snapshot(
        state="running",
        preset="fake",
        method="CondLR τ=0.1",
        dataset="fashion-mnist",
        model="lenet5",
        device="cpu",
        run_dir="fake-run",
        step=2000,
        epoch=5,
        epochs=20,
        total_steps=7040,
        samples_per_s=4321.0,
        eta_s=754.0,
        tau=0.1,
        theta=0.1,
        lr=0.1,
        train_loss=0.35,
        train_acc=0.88,
        val_loss=0.41,
        val_acc=0.86,
        test_acc=0.85,
        curves={
            "train_loss": tuple((s, 2.3 * math.exp(-s / 400) + 0.3) for s in steps),
            "train_acc": tuple((s, 0.9 - 0.8 * math.exp(-s / 300)) for s in steps),
            "val_loss": tuple((s, 2.3 * math.exp(-s / 400) + 0.4) for s in steps[::20]),
            "val_acc": tuple((s, 0.88 - 0.8 * math.exp(-s / 300)) for s in steps[::20]),
            "test_acc": tuple((s, 0.87 - 0.8 * math.exp(-s / 300)) for s in steps[::20]),
        },
        layers=layers,
        params=123_456,
        dense_params=431_080,
        compression=1 - 123_456 / 431_080,
        rank_fraction=0.2,
        adversarial=attacks[-1],
        adversarial_history=attacks,
        events=events,
        version=version,
    )


class FakeClient:
    """The EngineClient interface: ``latest()`` returns the scripted snapshot; ``send()`` records
    the command and answers with ``reply(command)`` — (status, message) — as an acknowledgement
    of this session, or of another session with ``ack_from_other()``."""

    def __init__(self, snapshot: Snapshot | None = None, reply=None) -> None:
        self.snapshot = snapshot or scripted_snapshot()
        self.commands: list = []
        self.session = 1
        self.pid = 4242
        self.connected = True
        self.closed = False
        self.ended_state = None
        self.lost_reason = ""
        self.reply = reply or (lambda command: ("applied", f"{command.kind} applied"))
        self._acks: list[Ack] = []

    @property
    def engine_died(self) -> bool:
        return not self.connected and not self.closed and self.ended_state is None

    def send(self, command) -> str:
        self.commands.append(command)
        status, message = self.reply(command)
        request_id = str(len(self.commands))
        self._acks.append(Ack(request_id, self.session, command.kind, status, message))
        return request_id

    def ack_from_other(self, kind: str, message: str, status: str = "applied", session: int | None = None) -> None:
        """An acknowledgement of another client's command (session 0: the engine's own, a signal)."""
        self._acks.append(Ack("9", self.session + 1 if session is None else session, kind, status, message))

    def die(self) -> None:
        """What the client sees when the engine process is killed."""
        self.connected = False
        self.lost_reason = "the connection closed without the run ending"

    def latest(self) -> Snapshot:
        return self.snapshot

    def take_acks(self) -> list[Ack]:
        acks, self._acks = self._acks, []
        return acks

    def take_errors(self) -> list[str]:
        return []

    def close(self) -> None:
        self.closed = True
        self.connected = False


class FakeLauncher:
    """Starts nothing: every run is ``run_dir`` and attaching gives ``client``; records calls."""

    def __init__(self, client: FakeClient, run_dir: Path) -> None:
        self.client, self.run_dir = client, Path(run_dir)
        self.calls: list[tuple] = []
        self.resume_overrides: list[list[str]] = []  # the --set items of each resume

    def start(self, preset, overrides, runs_root) -> Path:
        self.calls.append(("start", preset))
        return self.run_dir

    def resume(self, run_dir, overrides) -> Path:
        self.calls.append(("resume", Path(run_dir)))
        self.resume_overrides.append(list(overrides))
        return self.run_dir

    def attach(self, run_dir) -> FakeClient:
        self.calls.append(("attach", Path(run_dir)))
        return self.client
