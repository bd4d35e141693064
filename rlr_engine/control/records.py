"""The engine's plain records: commands in, events and snapshots out.

Everything here is immutable and made of plain Python values (no tensors), so a record can be
serialised and sent to a dashboard in another process.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlr_engine.core.catalog import ATTACKS, AttackFacts
from rlr_engine.core.validation import eps_problem, shown


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
class RefreshLayers(Command):
    """Recompute every layer's spectrum now (they are otherwise refreshed at most once a second)."""

    kind: ClassVar[str] = "refresh_layers"


@dataclass(frozen=True)
class Note(Command):
    """Something a dashboard wants in the run's record, e.g. a value it rejected before sending
    or a screenshot it saved; ``level`` is rejected or info."""

    kind: ClassVar[str] = "note"
    level: str
    message: str


@dataclass(frozen=True)
class SetAdaptation(Command):
    """Change the soft-conditioning weight β and/or the window length k (batches) of a
    rank-adaptive run; empty fields stay as they are."""

    kind: ClassVar[str] = "set_adaptation"
    beta: float | None = None
    adapt_every: int | None = None


@dataclass(frozen=True)
class Stop(Command):
    """Stop cleanly: write a final checkpoint and end the run (resumable). ``reason``: what asked
    for it when no client did (a signal), shown with the acknowledgement."""

    kind: ClassVar[str] = "stop"
    reason: str = ""


COMMANDS = {cls.kind: cls for cls in (SetTau, Truncate, SetLearningRate, Pause, Resume, AttackNow,
                                      SaveCheckpoint, RefreshLayers, SetAdaptation, Note, Stop)}


def _field_error(kind: str, name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{kind}.{name} = {shown(value)} is not allowed: expected {allowed}")


def _as_floats(kind: str, name: str, value: Any) -> tuple[float, ...]:
    """A number, or a list of them, from the wire as floats; an integer no float holds is
    refused, not rounded to ∞ (NaN and ∞, which JSON spells NaN and Infinity, are left to the
    command's own range check)."""
    many = isinstance(value, (list, tuple))
    try:
        return tuple(float(v) for v in (value if many else [value]))
    except OverflowError:
        noun = "a list of numbers" if many else "a number"
        raise _field_error(kind, name, value, f"{noun} a float can hold") from None


def _coerce_field(kind: str, name: str, annotation: str, value: Any) -> Any:
    """Check one field of a command read from the wire against its annotation (the dataclasses
    here use a handful of plain types: float, int, str, a tuple of floats, each maybe None)."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise _field_error(kind, name, value, base)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "float" and is_number:
        return _as_floats(kind, name, value)[0]
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base.startswith("tuple[float") and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return _as_floats(kind, name, value)
    allowed = {"float": "a number", "int": "an integer", "str": "a string"}.get(base, "a list of numbers")
    raise _field_error(kind, name, value, allowed + (" or null" if optional else ""))


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
            values[name] = _coerce_field(kind, name, str(f.type), raw[name])
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
class AttackSpec:
    """Which attack, at which budgets. ``steps`` and ``step_size`` apply to PGD; a step size of
    0 means 2.5·ε/steps (Madry et al.). ``restarts``: PGD runs from that many random starts and
    an image counts as robust only when it survives all of them."""

    name: str = "fgsm"
    eps: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03)
    steps: int = 10
    step_size: float = 0.0
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.name!r}")
        problem = eps_problem(self.eps, self.info.max_eps)
        if problem:
            raise ValueError(f"eps must be {problem} for {self.name}, got {list(self.eps)}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.step_size < math.inf:  # NaN fails too
            raise ValueError(f"step_size must be a finite number >= 0, got {self.step_size}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if self.restarts > 1 and not self.info.uses_restarts:
            raise ValueError(f"restarts apply to {', '.join(n for n, a in ATTACKS.items() if a.uses_restarts)}, "
                             f"not to {self.name}")

    @property
    def info(self) -> AttackFacts:
        return ATTACKS[self.name]


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
