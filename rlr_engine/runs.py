"""Run directories: ``runs/<timestamp>-<preset>/`` with config.toml, metrics.jsonl,
events.jsonl, checkpoint.pt and summary.json."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .presets import PresetError, RunConfig, dump_toml, validate
from .runfiles import CHECKPOINT, CONFIG, EVENTS, METRICS, SUMMARY
from .tensorboard_log import require_tensorboard



def new_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    """Create a fresh run directory and write the resolved config into it. PresetError (nothing
    created) when the config asks for an optional extra that is not installed."""
    require_tensorboard(config)
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{config.name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{config.name}-{suffix}"
    path.mkdir(parents=True)
    (path / CONFIG).write_text(dump_toml(config), encoding="utf-8")
    return path


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise PresetError(f"{run_dir} is not a run directory (no {CONFIG})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise PresetError(f"{path}: cannot be read: {error}") from None
    return validate(raw, source=str(path))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file, skipping a torn last line."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def trim_jsonl(path: Path, max_step: int) -> None:
    """Drop records logged after ``max_step`` (written after the checkpoint a run resumes from)."""
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(path)


@dataclass(frozen=True)
class RunInfo:
    path: Path
    config: RunConfig
    resumable: bool
    finished: bool
    summary: dict[str, Any] | None


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    """Run directories under root, newest first; unreadable ones are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for path in sorted(root.iterdir(), reverse=True):
        if not (path / CONFIG).is_file():
            continue
        try:
            config = read_run_config(path)
        except PresetError:
            continue
        summary = None
        if (path / SUMMARY).is_file():
            try:
                summary = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                summary = None
        finished = bool(summary and summary.get("state") == "finished")
        runs.append(RunInfo(path, config, (path / CHECKPOINT).is_file() and not finished, finished, summary))
    return runs
