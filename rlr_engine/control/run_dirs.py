"""Run directories (``runs/<timestamp>-<preset>/``, files named in run_files.py): creating them,
reading them, and telling whether an engine process still lives in one. Torch-free.

Liveness is never inferred from a pid or a socket file: the engine holds an exclusive fcntl lock
on ``engine.json`` for as long as it lives, and the kernel drops it when the process dies
(kill -9 and out-of-memory included). A stale socket or a reused pid therefore reads as dead.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rlr_engine.control.run_files import CHECKPOINT, CONFIG, DEFAULT_RUNS, ENGINE_INFO, EVENTS, METRICS, SUMMARY
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.config import RunConfig, run_name_from, run_name_problem, validate
from rlr_engine.core.errors import CheckpointError, PresetError
from rlr_engine.core.extras import require_extras
from rlr_engine.core.presets import dump_toml


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names (a run directory names its checkpoint.pt);
    CheckpointError when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def choose_run_dir(config: RunConfig, root: str | Path = DEFAULT_RUNS) -> Path:
    """The path a new run of ``config`` gets under ``root`` (nothing is created); the config's
    name is a plain directory name (RunConfig checks it)."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{config.name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{config.name}-{suffix}"
    return path


def create_run_dir(path: str | Path, config: RunConfig) -> Path:
    """Create a run directory (mode 0700: only its owner may read or steer the run) and write the
    resolved config into it. PresetError, and nothing created, when the config asks for an
    optional extra that is not installed."""
    require_extras(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # whatever the umask
    write_config(path, config)
    return path


def write_config(run_dir: Path, config: RunConfig) -> None:
    """config.toml: the run's resolved settings (rewritten atomically when a resume changes them)."""
    write_text_atomic(run_dir / CONFIG, dump_toml(config))


def discard_run_dir(path: str | Path) -> None:
    """Remove a run directory whose run never started (what a failed start wrote into it). A
    directory holding a checkpoint is a run, and is kept."""
    path = Path(path)
    if (path / CHECKPOINT).exists():
        return
    shutil.rmtree(path, ignore_errors=True)


def new_run_dir(config: RunConfig, root: str | Path = DEFAULT_RUNS) -> Path:
    """Create a fresh run directory for ``config`` under ``root``."""
    return create_run_dir(choose_run_dir(config, root), config)


# -- liveness --------------------------------------------------------------------------------
class RunBusy(Exception):
    """Another engine process lives in this run directory."""


class EngineLock:
    """Held by the engine process for its whole life: an exclusive lock on engine.json, which
    also says who holds it (pid, start time, host)."""

    def __init__(self, run_dir: str | Path, info: dict[str, Any]) -> None:
        path = Path(run_dir) / ENGINE_INFO
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = read_engine_info(run_dir)
            raise RunBusy(
                f"{run_dir} is in use by a running engine (pid {other.get('pid', '?')}); "
                f"attach with: rlr-tui --attach {run_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.time(), **info}).encode("utf-8"))
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def engine_alive(run_dir: str | Path) -> bool:
    """True while an engine process holds the run's lock."""
    path = Path(run_dir) / ENGINE_INFO
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False


def read_engine_info(run_dir: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / ENGINE_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise PresetError(f"{run_dir} is not a run directory (no {CONFIG})")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not TOML, or an integer Python cannot read
        raise PresetError(f"{path}: cannot be read: {error}") from None
    if isinstance(raw.get("name"), str) and run_name_problem(raw["name"]):
        raw["name"] = run_name_from(raw["name"])  # the run has its directory: its name only labels it
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
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def tail_jsonl(path: Path, max_bytes: int = 1 << 16) -> list[dict[str, Any]]:
    """The records in the last ``max_bytes`` of a JSONL file (a cut first line is skipped)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            lines = handle.read().splitlines()
    except OSError:
        return []
    if size > max_bytes:
        lines = lines[1:]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return records


LIVE_STATES = ("starting", "running", "paused")
RESUMABLE_STATES = ("stopped", "dead")


@dataclass(frozen=True)
class RunInfo:
    """One run directory as ``rlr runs`` and the picker show it. ``state`` is running, paused or
    starting (an engine lives there), finished, stopped, failed, or dead (no engine, and the run
    neither finished nor stopped: killed, out of memory, power cut)."""

    path: Path
    config: RunConfig
    state: str
    step: int | None
    total_steps: int | None
    tau: float | None
    last_checkpoint_step: int | None
    pid: int | None
    summary: dict[str, Any] | None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES and (self.path / CHECKPOINT).is_file()

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_info(path: str | Path, ask_engine: bool = True) -> RunInfo:
    """What is known of one run directory (PresetError when it is not one). With ``ask_engine``
    a live run is asked for its state and step over its control socket."""
    path = Path(path)
    config = read_run_config(path)
    info = read_engine_info(path)
    pid = info.get("pid")
    total = info.get("total_steps")
    events = tail_jsonl(path / EVENTS)
    checkpoints = [e.get("step") for e in events if e.get("kind") == "checkpoint"]
    last_checkpoint = checkpoints[-1] if checkpoints else None
    step = events[-1].get("step") if events else None
    trains = [r for r in tail_jsonl(path / METRICS) if r.get("type") == "train"]
    tau = trains[-1].get("tau") if trains else None
    summary = None
    if engine_alive(path):
        state = "running"
        if ask_engine:
            from rlr_engine.control.client import EngineClient, EngineUnavailable
            from rlr_engine.control.protocol import ProtocolError

            try:
                client = EngineClient.connect(path, client="rlr runs", timeout=2.0)
                snap = client.wait(lambda s: True, timeout=2.0)
                client.close()
                if snap is not None:
                    state, step, total, tau = snap.state, snap.step, snap.total_steps, snap.tau
                    last_checkpoint = snap.last_checkpoint_step
            except (EngineUnavailable, ProtocolError):
                pass
    else:
        summary = _read_summary(path)
        state = summary.get("state", "dead") if summary else "dead"
        if summary:
            step = summary.get("steps", step)
            tau = summary.get("tau", tau)
            last_checkpoint = summary.get("last_checkpoint_step", last_checkpoint)
            total = summary.get("total_steps", total)
    return RunInfo(path, config, state, step, total, tau, last_checkpoint, pid, summary)


def list_runs(root: str | Path = DEFAULT_RUNS, ask_engine: bool = True) -> list[RunInfo]:
    """Run directories under root: live runs first, then the rest, newest first within each;
    unreadable ones are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for path in sorted(root.iterdir(), reverse=True):
        if not (path / CONFIG).is_file():
            continue
        try:
            runs.append(run_info(path, ask_engine))
        except PresetError:
            continue
    return sorted(runs, key=lambda r: not r.live)
