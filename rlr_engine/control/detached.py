"""Start an engine process that outlives its terminal (``rlr train --detach``, the dashboard).
Torch-free: the dashboard calls it.

The engine is started in its own session (setsid: its own process group, no controlling
terminal, so a closing terminal's SIGHUP never reaches it) with ``--engine-child``. It validates
and loads everything, creates the run directory, starts its control socket and then writes
``ready <run dir>`` on stdout; from then on its output goes to the run's engine.log. A start that
fails (bad preset, missing data set, no GPU, corrupt checkpoint) prints the engine's one-line
error instead and leaves no run directory behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

READY = "ready "
ENGINE_CHILD_FLAG = "--engine-child"


class LaunchError(Exception):
    """The engine process could not start; the message is its own error."""


def engine_command(train_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "rlr_engine.cli", "train", *train_args, ENGINE_CHILD_FLAG]


def start_detached(train_args: Sequence[str]) -> tuple[Path, int]:
    """Start ``rlr train TRAIN_ARGS`` as a detached engine; returns (run directory, pid) once its
    control socket listens. LaunchError with the engine's message when it cannot start."""
    proc = subprocess.Popen(
        engine_command(train_args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ),
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None  # both are pipes
    line = proc.stdout.readline().decode("utf-8", "replace").strip()
    if line.startswith(READY):
        proc.stdout.close()
        proc.stderr.close()
        # Whoever started it reaps it when it ends (a long-lived dashboard would keep a zombie).
        threading.Thread(target=proc.wait, name="rlr-engine-reaper", daemon=True).start()
        return Path(line[len(READY) :]), proc.pid
    _, err = proc.communicate()
    message = err.decode("utf-8", "replace").strip()
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if "error: " in text:
        text = text[text.rindex("error: ") + len("error: ") :]
    raise LaunchError(text or f"the engine exited with code {proc.returncode}")
