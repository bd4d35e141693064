"""What a new or resumed run will be, checked before anything is created: its config (preset,
overrides, the resumed run's own), its run directory and the optional packages it needs. Shared
by ``rlr train`` (``--detach``, ``--nproc``) and the dashboard, so a typo is one line before any
process starts. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlr_engine.control.run_dirs import RunInfo, choose_run_dir, engine_alive, read_run_config, run_info
from rlr_engine.control.run_files import CHECKPOINT, CONTROL_SOCKET
from rlr_engine.control.unix_socket import socket_path_problem
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import UserError
from rlr_engine.core.extras import require_extras
from rlr_engine.core.presets import load_preset, resume_config


def run_config(
    preset: str | None, overrides: Sequence[str], resume: str | Path | None, device: str | None
) -> RunConfig:
    """The config of a new run of ``preset``, or of the run in ``resume``, with ``overrides``
    (``key=value``) and ``device``; PresetError or UserError naming what is wrong."""
    extra = list(overrides) + ([f"device={device}"] if device else [])
    if resume:
        return resume_config(read_run_config(resume), extra)
    if preset is None:
        raise UserError("give a preset name or file, or --resume RUN_DIR (see `rlr presets`)")
    return load_preset(preset, extra)


def extension_problem(info: RunInfo, config: RunConfig) -> str | None:
    """Why resuming the finished run ``info`` with ``config`` would train nothing more (None when
    the config takes it further: more epochs than it trained, and a max_steps past its step, or
    none). A finished run goes on from its final checkpoint, on the same curves."""
    if not info.finished or info.summary is None:
        return None
    epochs, step = info.summary.get("epochs", config.epochs), info.summary.get("steps", info.step or 0)
    if config.epochs <= epochs:
        return (
            f"the run finished after {epochs} epochs (step {step}); to train it on, raise epochs: "
            f"--set epochs=N with N > {epochs}"
        )
    if config.max_steps and config.max_steps <= step:
        return (
            f"the run finished at step {step}, its max_steps = {config.max_steps}; to train it on, raise "
            f"max_steps too (--set max_steps=N with N > {step}, or 0 for no limit)"
        )
    return None


def prepare_run(
    preset: str | None, overrides: Sequence[str], resume: str | Path | None, runs_root: str | Path, device: str | None
) -> tuple[RunConfig, Path, bool]:
    """The config (``run_config``) and run directory of a new run of ``preset`` (under
    ``runs_root``), or of the run in ``resume``, checked; nothing is created yet. Returns
    (config, run_dir, whether the run directory is new). UserError (or PresetError) naming what
    is wrong otherwise."""
    config = run_config(preset, overrides, resume, device)
    require_extras(config)  # a missing optional extra is reported before anything changes
    if resume:
        run_dir = Path(resume)
        if engine_alive(run_dir):
            raise UserError(f"--resume {run_dir}: the run is still running; attach with: rlr-tui --attach {run_dir}")
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume {run_dir}: no {CHECKPOINT} in that directory, nothing to resume")
        problem = extension_problem(run_info(run_dir, ask_engine=False), config)
        if problem:
            raise UserError(f"--resume {run_dir}: {problem}")
        problem = socket_path_problem(run_dir / CONTROL_SOCKET)
        if problem:
            raise UserError(f"--resume {run_dir}: {problem}; move the run directory to a shorter path")
        return config, run_dir, False
    run_dir = choose_run_dir(config, runs_root)
    problem = socket_path_problem(run_dir / CONTROL_SOCKET)
    if problem:
        raise UserError(f"--runs {runs_root}: {problem}; choose a shorter directory for runs")
    return config, run_dir, True
