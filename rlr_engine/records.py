"""The engine's plain records: commands in, events and snapshots out.

Everything here is immutable and made of plain Python values (no tensors), so a record can be
serialised and sent to a dashboard in another process.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Command:
    """Base of all commands; ``kind`` names it in serialised form."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SetTau(Command):
    kind: ClassVar[str] = "set_tau"
    tau: float


@dataclass(frozen=True)
class Truncate(Command):
    """Truncate one layer (by name) or all, with relative tolerance θ or to an explicit rank."""

    kind: ClassVar[str] = "truncate"
    theta: float | None = None
    rank: int | None = None
    layer: str | None = None


@dataclass(frozen=True)
class SetLearningRate(Command):
    kind: ClassVar[str] = "set_lr"
    lr: float


@dataclass(frozen=True)
class Pause(Command):
    kind: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Command):
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True)
class AttackNow(Command):
    """Run an attack on the live subset now; empty fields mean the run's configured ones."""

    kind: ClassVar[str] = "attack"
    attack: str | None = None
    eps: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    kind: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class Stop(Command):
    """Stop cleanly: write a final checkpoint and end the run (resumable)."""

    kind: ClassVar[str] = "stop"


COMMANDS = {cls.kind: cls for cls in (SetTau, Truncate, SetLearningRate, Pause, Resume, AttackNow,
                                      SaveCheckpoint, Stop)}


def command_from_dict(raw: dict[str, Any]) -> Command:
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if kind not in COMMANDS:
        raise ValueError(f"unknown command kind {kind!r}; known: {', '.join(COMMANDS)}")
    return COMMANDS[kind](**raw)


@dataclass(frozen=True)
class Event:
    """Something the user should see: a command applied or rejected, a truncation, a checkpoint."""

    seq: int
    step: int
    time: float
    kind: str  # applied, rejected, truncation, checkpoint, evaluation, attack, warning, error, info
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LayerStats:
    """Spectrum of one compressible layer: σ of W (= σ of S for a low-rank layer)."""

    name: str
    shape: tuple[int, int]
    rank: int
    full_rank: int
    sigma: tuple[float, ...]
    low_rank: bool

    @property
    def sigma_max(self) -> float:
        return self.sigma[0] if self.sigma else 0.0

    @property
    def sigma_min(self) -> float:
        return self.sigma[-1] if self.sigma else 0.0

    @property
    def kappa(self) -> float:
        return self.sigma_max / self.sigma_min if self.sigma_min > 0 else math.inf


@dataclass(frozen=True)
class AttackResult:
    step: int
    epoch: int
    attack: str
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]


Series = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Snapshot:
    """What the engine reports, published at a bounded rate. ``state`` is one of starting,
    running, paused, finished, stopped, failed."""

    state: str = "starting"
    preset: str = ""
    method: str = ""
    dataset: str = ""
    model: str = ""
    device: str = ""
    run_dir: str = ""
    step: int = 0
    epoch: int = 0
    epochs: int = 0
    total_steps: int = 0
    samples_per_s: float = 0.0
    eta_s: float | None = None
    tau: float = math.inf
    theta: float = 0.1
    lr: float = 0.0
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    curves: dict[str, Series] = field(default_factory=dict)
    layers: tuple[LayerStats, ...] = ()
    params: int = 0
    dense_params: int = 0
    compression: float = 0.0
    rank_fraction: float = 1.0
    adversarial: AttackResult | None = None
    adversarial_history: tuple[AttackResult, ...] = ()
    events: tuple[Event, ...] = ()
    message: str = ""
    version: int = 0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused")
