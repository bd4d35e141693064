"""How the dashboard reaches engines: start one, resume one, attach to one. The engine always
runs in its own process (``rlr train --detach``); the dashboard is a client of its control
socket and never imports torch. Tests give the app another launcher (scripted clients)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlr_engine.control.client import EngineClient
from rlr_engine.control.detached import start_detached


class EngineLauncher:
    """The real thing: detached engine processes and socket clients. With ``nproc`` > 1 a run
    trains data-parallel on that many processes (torch.distributed); the dashboard attaches to
    rank 0's control socket as to any run."""

    def __init__(self, nproc: int = 1) -> None:
        self.nproc = nproc

    def _train_args(self, args: list[str], overrides: Sequence[str]) -> list[str]:
        for item in overrides:
            args += ["--set", item]
        return args + (["--nproc", str(self.nproc)] if self.nproc > 1 else [])

    def start(self, preset: str, overrides: Sequence[str], runs_root: Path) -> Path:
        """Start a new run; its run directory once its engine listens (LaunchError otherwise)."""
        return start_detached(self._train_args([preset], overrides) + ["--runs", str(runs_root)])[0]

    def resume(self, run_dir: Path, overrides: Sequence[str]) -> Path:
        return start_detached(self._train_args(["--resume", str(run_dir)], overrides))[0]

    def attach(self, run_dir: Path) -> EngineClient:
        """EngineUnavailable when no engine answers there."""
        return EngineClient.connect(run_dir, client="rlr-tui")
