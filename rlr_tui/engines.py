"""How the dashboard reaches engines: start one, resume one, attach to one. The engine always
runs in its own process (``rlr train --detach``); the dashboard is a client of its control
socket and never imports torch. Tests give the app another launcher (scripted clients)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlr_engine.client import EngineClient
from rlr_engine.launch import start_detached


class EngineLauncher:
    """The real thing: detached engine processes and socket clients."""

    def start(self, preset: str, overrides: Sequence[str], runs_root: Path) -> Path:
        """Start a new run; its run directory once its engine listens (LaunchError otherwise)."""
        args = [preset]
        for item in overrides:
            args += ["--set", item]
        return start_detached(args + ["--runs", str(runs_root)])[0]

    def resume(self, run_dir: Path, overrides: Sequence[str]) -> Path:
        args = ["--resume", str(run_dir)]
        for item in overrides:
            args += ["--set", item]
        return start_detached(args)[0]

    def attach(self, run_dir: Path) -> EngineClient:
        """EngineUnavailable when no engine answers there."""
        return EngineClient.connect(run_dir, client="rlr-tui")
