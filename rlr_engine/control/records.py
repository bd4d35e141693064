"""The engine's plain records: commands in, events and snapshots out.

Everything here is immutable and made of plain Python values (no tensors), so a record can be
serialised and sent to a dashboard in another process.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlr_engine.core.validation import Setting, Unfit, shown


def _wire(kind: type, optional: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """A command field as read from the wire: its type (and whether null is allowed); the
    ranges are the handlers' (validation.check_tau and the like)."""
    return field(
        default=default, metadata={"setting": Setting(kind, item=float if kind is tuple else None, optional=optional)}
    )


@dataclass(frozen=True)
class Command:
    """Base of all commands; ``kind`` names it in serialised form."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class SetTau(Command):
    kind: ClassVar[str] = "set_tau"
    tau: float = _wire(float)


@dataclass(frozen=True)
class Truncate(Command):
    """Truncate one layer (by name) or all, with relative tolerance θ or to an explicit rank."""

    kind: ClassVar[str] = "truncate"
    theta: float | None = _wire(float, optional=True, default=None)
    rank: int | None = _wire(int, optional=True, default=None)
    layer: str | None = _wire(str, optional=True, default=None)


@dataclass(frozen=True)
class SetLearningRate(Command):
    kind: ClassVar[str] = "set_lr"
    lr: float = _wire(float)


@dataclass(frozen=True)
class Pause(Command):
    """Pause now or, with ``at_step``, when the run reaches that step (after the step's epoch end
    when it ends an epoch): a breakpoint, for looking at the run at a chosen step. A later
    ``at_step`` replaces an earlier one; it is kept in memory only, not in the checkpoint."""

    kind: ClassVar[str] = "pause"
    at_step: int | None = _wire(int, optional=True, default=None)


@dataclass(frozen=True)
class Resume(Command):
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True)
class AttackNow(Command):
    """Run an attack on the live subset now; empty fields mean the run's configured ones."""

    kind: ClassVar[str] = "attack"
    attack: str | None = _wire(str, optional=True, default=None)
    eps: tuple[float, ...] | None = _wire(tuple, optional=True, default=None)


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    kind: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class RefreshLayers(Command):
    """Recompute every layer's spectrum now (they are otherwise refreshed at most once a second)."""

    kind: ClassVar[str] = "refresh_layers"


@dataclass(frozen=True)
class Note(Command):
    """Something a dashboard wants in the run's record, e.g. a value it rejected before sending
    or a screenshot it saved; ``level`` is rejected or info."""

    kind: ClassVar[str] = "note"
    level: str = _wire(str)
    message: str = _wire(str)


@dataclass(frozen=True)
class SetAdaptation(Command):
    """Change the soft-conditioning weight β and/or the window length k (batches) of a
    rank-adaptive run; empty fields stay as they are."""

    kind: ClassVar[str] = "set_adaptation"
    beta: float | None = _wire(float, optional=True, default=None)
    adapt_every: int | None = _wire(int, optional=True, default=None)


@dataclass(frozen=True)
class Undo(Command):
    """Take back the newest live change still remembered — a truncation, τ, learning rate, θ, β
    or window change: the weights, optimizer state and ranks from just before it come back, and
    training goes on from the current step (rlr_engine/run/undo.py)."""

    kind: ClassVar[str] = "undo"


@dataclass(frozen=True)
class Stop(Command):
    """Stop cleanly: write a final checkpoint and end the run (resumable). ``reason``: what asked
    for it when no client did (a signal), shown with the acknowledgement."""

    kind: ClassVar[str] = "stop"
    reason: str = _wire(str, default="")


COMMANDS = {
    cls.kind: cls
    for cls in (
        SetTau,
        Truncate,
        SetLearningRate,
        Pause,
        Resume,
        AttackNow,
        SaveCheckpoint,
        RefreshLayers,
        SetAdaptation,
        Note,
        Undo,
        Stop,
    )
}


def command_from_dict(raw: Any) -> Command:
    """The command a plain dict (as sent over the control socket) describes; ValueError naming
    the kind, the field and what is allowed when it describes none."""
    if not isinstance(raw, dict):
        raise ValueError(f"a command must be an object with a 'kind', got {raw!r}")
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if kind not in COMMANDS:
        raise ValueError(f"unknown command kind {kind!r}; known: {', '.join(COMMANDS)}")
    cls = COMMANDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{kind}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields) or 'none'}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            try:
                values[name] = f.metadata["setting"].coerce(raw[name])
            except Unfit as allowed:
                raise ValueError(f"{kind}.{name} = {shown(raw[name])} is not allowed: expected {allowed}") from None
        elif f.default is dataclasses.MISSING:
            raise ValueError(f"{kind}: missing field {name!r}")
    return cls(**values)


@dataclass(frozen=True)
class Ack:
    """The engine's answer to one command: ``status`` is applied or rejected, ``message`` says
    what changed or why nothing did. ``request_id`` and ``session`` name the command and the
    client that sent it (empty for commands given in-process)."""

    request_id: str
    session: int
    kind: str
    status: str
    message: str

    @property
    def applied(self) -> bool:
        return self.status == "applied"


# How many recent events an engine keeps in memory (and sends a dashboard that attaches), and a
# client holds.
RECENT_EVENTS = 200


@dataclass(frozen=True)
class Event:
    """Something the user should see: a command applied or rejected, a truncation, a checkpoint."""

    seq: int
    step: int
    time: float
    kind: str  # applied, rejected, truncation, checkpoint, evaluation, attack, warning, error, info
    message: str


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
    """Accuracy per ε under one attack at one step, on ``samples`` test images (0: not known),
    its random draws started from ``seed`` (None: not recorded)."""

    step: int
    epoch: int
    attack: str
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]
    samples: int = 0
    seed: int | None = None


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
    beta: float | None = None  # rank-adaptive runs: soft conditioning weight
    adapt_every: int | None = None  # rank-adaptive runs: batches per window
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
    last_checkpoint_step: int | None = None
    version: int = 0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused")
