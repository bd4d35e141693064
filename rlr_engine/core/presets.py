"""Presets: one TOML file per run recipe, validated against a typed schema.

Every bad value is reported as PresetError naming the file, the key, the value and what is
allowed; nothing is half-applied.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rlr_engine.core.catalog import (ADAPTIVE_METHODS, ATTACKS, CORE_OPTIMIZERS, DATASETS, DEVICES, METHODS, MODEL_INPUTS,
                                     STEP_SCALINGS, model_data_problem)
from rlr_engine.control.records import AttackSpec
from rlr_engine.core.validation import (ADAPT_EVERY, BETA, LR, SHOWN_CHARS, TAU, THETA, NumberRange, eps_problem, names_infinity,
                         parse_infinity, shown)

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


class PresetError(ValueError):
    """A preset file, override or value that does not fit the schema."""


def _choice(options: Iterable[str]):
    options = tuple(options)

    def check(value: Any) -> str | None:
        return None if value in options else f"one of {', '.join(options)}"
    return check


def _within(allowed_range: NumberRange):
    def check(value: Any) -> str | None:
        return None if value in allowed_range else allowed_range.allowed()
    return check


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False):
    return _within(NumberRange(low, high, low_open, high_open))


RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_RUN_NAME = 64


def run_name_problem(value: Any) -> str | None:
    """What a run's name must be (None when ``value`` is one): it is part of its directory's
    name (runs/<stamp>-<name>/), so one plain path component."""
    if isinstance(value, str) and len(value) <= MAX_RUN_NAME and RUN_NAME.fullmatch(value):
        return None
    return (f"1 to {MAX_RUN_NAME} letters, digits, '.', '_' or '-', not starting with '.' "
            f"(it names the run's directory)")


def run_name_from(text: str) -> str:
    """A run name made from ``text`` that the user did not choose as one (a preset file's name,
    the name in a run directory written before names were checked): every other character
    becomes '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip(".")[:MAX_RUN_NAME]
    return name or "run"


def _device(value: str) -> str | None:
    if value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit()):
        return None
    return f"{', '.join(DEVICES)} or cuda:N"


def _eps(values: list) -> str | None:
    """What every attack's budgets share; validate() then checks them against the run's attack
    (L∞: [0, 1], L2: any length), whose facts in catalog.ATTACKS say which."""
    return eps_problem(values, max(facts.max_eps for facts in ATTACKS.values()))


def _milestones(values: list) -> str | None:
    return None if all(v >= 0 for v in values) else "a list of epoch numbers >= 0"


def _spec(type_: type, check=None, help: str = "", item: type | None = None) -> dict:
    return {"type": type_, "check": check, "help": help, "item": item}


@dataclass(frozen=True)
class RunConfig:
    """A fully resolved run recipe."""

    name: str = field(default="custom", metadata=_spec(str, run_name_problem, "preset name; names the run's directory"))
    description: str = field(default="", metadata=_spec(str, help="one line of what it is for"))
    dataset: str = field(default="digits", metadata=_spec(str, _choice(DATASETS)))
    model: str = field(default="digits-cnn", metadata=_spec(str, _choice(MODEL_INPUTS)))
    method: str = field(default="lowrank", metadata=_spec(str, _choice(METHODS),
                        "dense: no factorisation; lowrank: CondLR (tau = inf is vanilla low-rank); "
                        "robust-dlrt: rank-adaptive with the soft regularizer beta; condlr-adaptive: "
                        "rank-adaptive with kappa(S) <= 1 + tau at every window boundary"))
    tau: float = field(default=0.1, metadata=_spec(float, _within(TAU),
                       "conditioning tolerance: kappa(S) <= 1 + tau; inf switches it off"))
    rank_fraction: float = field(default=0.2, metadata=_spec(float, _number(0, 1, low_open=True),
                                 "fraction of each layer's full rank kept (rank-adaptive: the starting rank)"))
    max_rank_fraction: float = field(default=0.5, metadata=_spec(float, _number(0, 1, low_open=True),
                                     "rank-adaptive: storage (largest rank) of each layer as a fraction of "
                                     "its full rank; at least rank_fraction"))
    adapt_every: int = field(default=10, metadata=_spec(int, _within(ADAPT_EVERY),
                             "rank-adaptive: batches per window (augment on the first, truncate with "
                             "truncate_theta on the last)"))
    beta: float = field(default=0.0, metadata=_spec(float, _within(BETA),
                        "rank-adaptive: weight of the soft conditioning regularizer "
                        "||S S^T - (||S||_F^2 / r) I||_F added to the loss (0: off)"))
    core_optimizer: str = field(default="sgd", metadata=_spec(str, _choice(CORE_OPTIMIZERS),
                                "rank-adaptive: optimizer of the cores S and the other parameters "
                                "(sgd: with momentum; adamw: momentum is not used)"))
    last_layer: str = field(default="dense", metadata=_spec(str, _choice(("dense", "full-rank")),
                            "dense: leave the classifier dense; full-rank: factorise it at full rank"))
    step_scaling: str = field(default="reference", metadata=_spec(str, _choice(STEP_SCALINGS)))
    reference_compat: bool = field(default=False, metadata=_spec(bool))
    channels_last: bool = field(default=False, metadata=_spec(bool, help="run convolutions channels-last "
                                "(much faster low-rank convs on CPU; inputs stay contiguous for attacks)"))
    compile: bool = field(default=False, metadata=_spec(bool, help="compile the model's forward and backward "
                          "with torch.compile (fewer kernel launches; the first steps take longer)"))
    epochs: int = field(default=10, metadata=_spec(int, _number(1, 100_000)))
    max_steps: int = field(default=0, metadata=_spec(int, _number(0, 10**9), "stop after this many steps (0: no limit)"))
    batch_size: int = field(default=128, metadata=_spec(int, _number(1, 65_536)))
    lr: float = field(default=0.1, metadata=_spec(float, _within(LR)))
    momentum: float = field(default=0.3, metadata=_spec(float, _number(0, 1, high_open=True)))
    weight_decay: float = field(default=0.0, metadata=_spec(float, _number(0, 1)))
    milestones: tuple[int, ...] = field(default=(), metadata=_spec(list, _milestones, item=int))
    gamma: float = field(default=0.3, metadata=_spec(float, _number(0, 1, low_open=True)))
    val_fraction: float = field(default=0.25, metadata=_spec(float, _number(0, 0.9)))
    seed: int = field(default=0, metadata=_spec(int, _number(0, 2**31 - 1)))
    eval_every: int = field(default=1, metadata=_spec(int, _number(0, 100_000), "epochs between evaluations (0: at the end)"))
    attack: str = field(default="fgsm", metadata=_spec(str, _choice(ATTACKS)))
    eps: tuple[float, ...] = field(default=(0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06),
                                   metadata=_spec(list, _eps, item=float))
    attack_every: int = field(default=1, metadata=_spec(int, _number(0, 100_000), "epochs between attacks (0: at the end)"))
    attack_samples: int = field(default=1000, metadata=_spec(int, _number(0, 10**7), "test images attacked during training (0: all)"))
    pgd_steps: int = field(default=10, metadata=_spec(int, _number(1, 10_000)))
    pgd_step_size: float = field(default=0.0, metadata=_spec(float, _number(0, 1), "0: 2.5 eps / steps"))
    truncate_every: int = field(default=0, metadata=_spec(int, _number(0, 100_000), "epochs between scheduled truncations (0: never)"))
    truncate_theta: float = field(default=0.1, metadata=_spec(float, _within(THETA)))
    min_rank: int = field(default=1, metadata=_spec(int, _number(1, 100_000)))
    checkpoint_every: int = field(default=1, metadata=_spec(int, _number(0, 100_000), "epochs between checkpoints (0: only at the end)"))
    data_dir: str = field(default="data", metadata=_spec(str))
    download: bool = field(default=True, metadata=_spec(bool))
    device: str = field(default="auto", metadata=_spec(str, _device))
    snapshot_interval: float = field(default=0.25, metadata=_spec(float, _number(0.01, 60)))
    tensorboard: bool = field(default=False, metadata=_spec(bool, help="also write TensorBoard event files into "
                              "runs/<id>/tensorboard/ (needs pip install 'rlr[tensorboard]')"))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def replace(self, **changes: Any) -> "RunConfig":
        return validate(dict(self.to_dict(), **changes), source="settings")

    @property
    def is_low_rank(self) -> bool:
        return self.method != "dense"

    @property
    def is_rank_adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def attack_spec(self, attack: str | None = None, eps=None, steps: int | None = None,
                    step_size: float | None = None) -> AttackSpec:
        """The run's attack, with any of its settings replaced (None keeps the run's own)."""
        return AttackSpec(attack or self.attack, tuple(eps) if eps else self.eps,
                          self.pgd_steps if steps is None else steps,
                          self.pgd_step_size if step_size is None else step_size)

    @property
    def method_label(self) -> str:
        """The preset's method with its starting τ (a live run's τ may differ: see method_label())."""
        return method_label(self.method, self.tau, self.beta)


def method_label(method: str, tau: float, beta: float = 0.0) -> str:
    """dense, vanilla low-rank (τ = ∞), CondLR τ = …, or a rank-adaptive method."""
    if method == "dense":
        return "dense"
    if method == "robust-dlrt":
        return f"robust-dlrt β={beta:g}"
    if method == "condlr-adaptive":
        return f"CondLR-adaptive τ={tau:g}"
    return "low-rank τ=inf" if math.isinf(tau) else f"CondLR τ={tau:g}"


FIELDS = {f.name: f for f in fields(RunConfig)}
# A preset file must say what it trains: without these the defaults would silently train
# something else. Overrides (--set) may still supply them.
REQUIRED_IN_FILE = ("dataset", "model", "method")


def _coerce(key: str, value: Any, source: str) -> Any:
    spec = FIELDS[key].metadata
    want = spec["type"]
    given = list(value) if isinstance(value, tuple) else value

    def bad(allowed: str) -> PresetError:
        return PresetError(f"{source}: {key} = {shown(given)} is not allowed: must be {allowed}")

    if want is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(spec["check"](math.nan).replace("a number", "an integer"))
    elif want is float:
        value = parse_infinity(value)
        allowed = spec["check"](math.nan) if spec["check"] else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(allowed)
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise bad(allowed) from None
    elif want is str:
        if not isinstance(value, str):
            raise bad(spec["check"](None) if spec["check"] else "a string")
    elif want is list:
        item = spec["item"]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or (
                item is int and not all(isinstance(v, int) for v in value)):
            raise bad(spec["check"]([-1.0]) or f"a list of {item.__name__}s")
        problem = spec["check"](value) if spec["check"] else None  # before float() meets a huge int
        if problem:
            raise bad(problem)
        return tuple(item(v) for v in value)
    problem = spec["check"](value) if spec["check"] else None
    if problem:
        raise bad(problem)
    return value


def validate(raw: Mapping[str, Any], source: str = "preset") -> RunConfig:
    """Check every key and value of a raw mapping and build a RunConfig from it."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise PresetError(f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(FIELDS)}")
    values = {key: _coerce(key, value, source) for key, value in raw.items()}
    config = RunConfig(**values)
    problem = model_data_problem(config.model, config.dataset)
    if problem:
        raise PresetError(f"{source}: {problem}")
    problem = eps_problem(config.eps, ATTACKS[config.attack].max_eps)
    if problem:
        raise PresetError(f"{source}: eps = {shown(list(raw.get('eps', config.eps)))} is not allowed with attack = "
                          f"{config.attack!r}: must be {problem}")
    if config.is_rank_adaptive and config.max_rank_fraction < config.rank_fraction:
        raise PresetError(f"{source}: max_rank_fraction = {config.max_rank_fraction!r} is not allowed: must be "
                          f">= rank_fraction = {config.rank_fraction!r} (the starting rank must fit the storage)")
    if config.is_rank_adaptive and config.truncate_every:
        raise PresetError(f"{source}: truncate_every = {config.truncate_every!r} is not allowed with method = "
                          f"{config.method!r}: must be 0 (it truncates every adapt_every batches)")
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``tau=0.5``, ``eps=[0, 0.01]``, ``tau=inf``); a value that
    is not valid TOML is taken as a string (``dataset=mnist``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise PresetError(f"--set {text!r}: expected key=value, e.g. --set tau=0.5")
    if key not in FIELDS:
        raise PresetError(f"--set {text!r}: unknown key {key!r}; allowed keys: {', '.join(FIELDS)}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except ValueError:  # not TOML (TOMLDecodeError), or an integer of more digits than Python reads
        parsed = value.strip()
    if isinstance(parsed, float) and math.isinf(parsed) and not names_infinity(value):
        parsed = value.strip()  # "1e400": a finite number too large for a float, refused as typed text is
    return key, parsed


def _override_source(text: str) -> str:
    """An override as its messages name it: ``--set key=value``, a long value cut."""
    return f"--set {text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + '…'}"


def preset_dirs() -> list[Path]:
    """Where named presets are looked up: $RLR_PRESETS (colon-separated), ./presets, the
    presets shipped beside the package."""
    dirs = [Path(p) for p in os.environ.get("RLR_PRESETS", "").split(os.pathsep) if p]
    return dirs + [Path.cwd() / "presets", PRESET_DIR]


def available_presets() -> dict[str, Path]:
    """Preset name → file, first directory wins."""
    found: dict[str, Path] = {}
    for directory in preset_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def resolve_preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise PresetError(f"{str(path)!r} is a directory, not a preset file (a .toml file or a preset name; "
                              f"see `rlr presets`)")
        if not path.is_file():
            raise PresetError(f"preset file {str(path)!r} does not exist")
        return path
    presets = available_presets()
    if name_or_path not in presets:
        raise PresetError(f"unknown preset {name_or_path!r}; available: {', '.join(presets) or 'none'} "
                          f"(or pass the path of a .toml file)")
    return presets[name_or_path]


def load_preset(name_or_path: str, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a preset by name or path, apply ``key=value`` overrides, validate everything."""
    path = resolve_preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise PresetError(f"preset {path}: cannot be read: {error}") from None
    except ValueError as error:  # TOMLDecodeError, or an integer of more digits than Python reads
        raise PresetError(f"preset {path}: not valid TOML: {error}") from None
    raw.setdefault("name", run_name_from(path.stem))
    overrides = list(overrides)
    overridden = {parse_override(text)[0] for text in overrides}
    missing = [key for key in REQUIRED_IN_FILE if key not in raw and key not in overridden]
    if missing:
        raise PresetError(f"preset {path}: missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} (a preset file must name its "
                          f"{', '.join(REQUIRED_IN_FILE)}; e.g. {missing[0]} = "
                          f"{_toml_value(getattr(RunConfig(), missing[0]))})")
    for text in overrides:
        key, value = parse_override(text)
        raw[key] = _coerce(key, value, _override_source(text))
    return validate(raw, source=f"preset {path}")


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    raw = config.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        raw[key] = _coerce(key, value, _override_source(text))
    return validate(raw, source="--set")


# What a resume may change. The checkpoint's weights and data split were made with
# FIXED_ON_RESUME, which a resume refuses to change. It restores RESTORED_ON_RESUME as they were
# last set (from a dashboard, or by the schedule); a resume sets one anew when told to (--set,
# or a config.toml changed since the checkpoint). Every other key is read afresh.
FIXED_ON_RESUME = ("dataset", "model", "method", "rank_fraction", "max_rank_fraction", "last_layer",
                   "core_optimizer", "seed", "val_fraction")
RESTORED_ON_RESUME = ("tau", "lr", "momentum", "weight_decay", "milestones", "gamma", "truncate_theta", "beta",
                      "adapt_every", "min_rank")


def resume_config(saved: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """The config of a resumed run: its saved one with ``overrides``, none of them FIXED_ON_RESUME."""
    overrides = list(overrides)
    config = apply_overrides(saved, overrides)
    for key in FIXED_ON_RESUME:
        if getattr(config, key) != getattr(saved, key):
            text = next(t for t in overrides if parse_override(t)[0] == key)
            raise PresetError(f"{_override_source(text)}: {key} cannot change when a run resumes (its checkpoint was trained "
                              f"with {key} = {_toml_value(saved.to_dict()[key])}); start a new run to change it")
    return config


def restored_keys_set(overrides: Iterable[str]) -> frozenset[str]:
    """The RESTORED_ON_RESUME keys that ``overrides`` set."""
    return frozenset(key for key in (parse_override(text)[0] for text in overrides) if key in RESTORED_ON_RESUME)


def dump_toml(config: RunConfig) -> str:
    """The resolved config as TOML (inf written as the TOML literal)."""
    lines = []
    for key, value in config.to_dict().items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
