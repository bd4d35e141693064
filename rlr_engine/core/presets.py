"""Presets: one TOML file per run recipe, found by name or path, with ``key=value`` overrides,
checked against the run config (config.py); and what a resumed run may change.

A relative path in a preset file (a model's .py file, an image folder or tensor file, weights,
init_from) is the preset file's folder's; in ``--set`` it is the working directory's. Both are
made absolute when read, so a run's config.toml names the same files from anywhere.

Every bad value is reported as PresetError naming the file, the key, the value and what is
allowed; nothing is half-applied.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rlr_engine.core.catalog import data_source, model_source, torchvision_weights
from rlr_engine.core.config import FIELDS, REQUIRED_IN_FILE, RunConfig, coerce_setting, run_name_from, validate
from rlr_engine.core.errors import PresetError
from rlr_engine.core.validation import SHOWN_CHARS, parse_float

PRESET_DIR = Path(__file__).resolve().parents[2] / "presets"


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
        parsed = tomllib.loads(f"v = {value.strip()}", parse_float=parse_float)["v"]
    except ValueError:  # not TOML (TOMLDecodeError), or an integer of more digits than Python reads
        parsed = value.strip()
    return key, parsed


def _absolute(path: str, base: Path) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def resolve_path(key: str, value: Any, base: Path) -> Any:
    """``value`` of ``key`` with a relative path in it made absolute against ``base`` (the
    preset file's folder, or the working directory for --set). Values of other keys, of another
    type, or without a path are returned unchanged (validation reports the bad ones)."""
    if not isinstance(value, str) or not value:
        return value
    if key == "model":
        source = model_source(value)
        return f"{_absolute(source.target, base)}:{source.attr}" if source and source.kind == "file" else value
    if key == "dataset":
        data = data_source(value)
        return (
            f"{data.kind}:{_absolute(data.target, base)}" if data and data.kind in ("imagefolder", "tensors") else value
        )
    if (key == "weights" and torchvision_weights(value) is None) or key == "init_from":
        return _absolute(value, base)
    return value


def _override_source(text: str) -> str:
    """An override as its messages name it: ``--set key=value``, a long value cut."""
    return f"--set {text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + '…'}"


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


EXAMPLES = "examples"


def example_presets() -> dict[str, Path]:
    """Name → file of the examples in the ``examples/`` folder of each preset directory (first
    directory wins). They are not presets by name: they need the user's data, so they are
    run by their path with ``--set dataset=...``."""
    found: dict[str, Path] = {}
    for directory in preset_dirs():
        if (directory / EXAMPLES).is_dir():
            for path in sorted((directory / EXAMPLES).glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def resolve_preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise PresetError(
                f"{str(path)!r} is a directory, not a preset file (a .toml file or a preset name; see `rlr presets`)"
            )
        if not path.is_file():
            raise PresetError(f"preset file {str(path)!r} does not exist")
        return path
    presets = available_presets()
    if name_or_path not in presets:
        raise PresetError(
            f"unknown preset {name_or_path!r}; available: {', '.join(presets) or 'none'} "
            f"(or pass the path of a .toml file)"
        )
    return presets[name_or_path]


def load_preset(name_or_path: str, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a preset by name or path, apply ``key=value`` overrides, validate everything."""
    path = resolve_preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=parse_float)
    except (OSError, UnicodeDecodeError) as error:
        raise PresetError(f"preset {path}: cannot be read: {error}") from None
    except ValueError as error:  # TOMLDecodeError, or an integer of more digits than Python reads
        raise PresetError(f"preset {path}: not valid TOML: {error}") from None
    raw.setdefault("name", run_name_from(path.stem))
    overrides = list(overrides)
    overridden = {parse_override(text)[0] for text in overrides}
    missing = [key for key in REQUIRED_IN_FILE if key not in raw and key not in overridden]
    if missing:
        raise PresetError(
            f"preset {path}: missing required key{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (a preset file must name its "
            f"{', '.join(REQUIRED_IN_FILE)}; e.g. {missing[0]} = "
            f"{_toml_value(getattr(RunConfig(), missing[0]))})"
        )
    raw = {key: resolve_path(key, value, path.parent) for key, value in raw.items()}
    _apply(raw, overrides)
    return validate(raw, source=f"preset {path}")


def _apply(raw: dict[str, Any], overrides: Iterable[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        raw[key] = resolve_path(key, coerce_setting(key, value, _override_source(text)), Path.cwd())


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    raw = config.to_dict()
    _apply(raw, overrides)
    return validate(raw, source="--set")


# What a resume may change. The checkpoint's weights and data split were made with
# FIXED_ON_RESUME, which a resume refuses to change. It restores RESTORED_ON_RESUME as they were
# last set (from a dashboard, or by the schedule); a resume sets one anew when told to (--set,
# or a config.toml changed since the checkpoint). Every other key is read afresh.
FIXED_ON_RESUME = (
    "dataset",
    "dataset_args",
    "image_size",
    "mean",
    "std",
    "test_fraction",
    "model",
    "model_args",
    "weights",
    "weights_skip_mismatched",
    "init_from",
    "lowrank_include",
    "lowrank_exclude",
    "rank_energy",
    "method",
    "rank_fraction",
    "max_rank_fraction",
    "last_layer",
    "core_optimizer",
    "seed",
    "val_fraction",
)
RESTORED_ON_RESUME = (
    "tau",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "truncate_theta",
    "beta",
    "adapt_every",
    "min_rank",
)


def resume_config(saved: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """The config of a resumed run: its saved one with ``overrides``, none of them FIXED_ON_RESUME."""
    overrides = list(overrides)
    config = apply_overrides(saved, overrides)
    for key in FIXED_ON_RESUME:
        if getattr(config, key) != getattr(saved, key):
            text = next(t for t in overrides if parse_override(t)[0] == key)
            raise PresetError(
                f"{_override_source(text)}: {key} cannot change when a run resumes (its checkpoint was trained "
                f"with {key} = {_toml_value(saved.to_dict()[key])}); start a new run to change it"
            )
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
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
