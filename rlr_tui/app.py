"""``rlr-tui``: watch and steer CondLR training live in the terminal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding

from rlr_engine.presets import PresetError, apply_overrides, load_preset
from rlr_engine.runs import CHECKPOINT, new_run_dir, read_run_config

from .screens.comparison import ComparisonError, ComparisonScreen, load_comparison
from .screens.dashboard import DashboardScreen
from .screens.help import HelpScreen
from .screens.picker import PickerScreen


def launch_engine(config, run_dir: Path, resume: bool):
    """Start the real training engine in its own thread and return it."""
    from rlr_engine.engine import Engine

    return Engine(config, run_dir, resume=resume).start()


class RlrApp(App):
    """Preset picker → dashboard. The engine runs in its own thread; this app only reads its
    snapshots and sends it commands."""

    CSS_PATH = "app.tcss"
    TITLE = "rlr"
    BINDINGS = [
        Binding("q", "quit_run", "Quit", id="quit", tooltip="Stop training (final checkpoint) and quit"),
        Binding("ctrl+c", "quit_run", "Quit", id="quit-ctrl-c", show=False, priority=True,
                tooltip="Stop training (final checkpoint) and quit"),
        Binding("question_mark,f1", "help", "Help", id="help", tooltip="Show every key"),
    ]

    def __init__(self, preset: str | None = None, overrides: Iterable[str] = (), runs_root: str | Path = "runs",
                 resume: str | Path | None = None,
                 engine_factory: Callable = launch_engine, comparison: str | Path | None = None) -> None:
        super().__init__()
        self.comparison = comparison
        self.preset, self.overrides = preset, list(overrides)
        self.runs_root, self.resume = Path(runs_root), resume
        self.engine_factory = engine_factory
        self.engine = None

    def on_mount(self) -> None:
        if self.comparison:
            try:
                rows, attacks = load_comparison(self.comparison)
            except ComparisonError as error:
                self.notify(str(error), severity="error", timeout=30)
                self.push_screen(PickerScreen(self.overrides, self.runs_root))
                return
            self.push_screen(ComparisonScreen(self.comparison, rows, attacks))
        elif self.resume:
            self.resume_run(self.resume)
        elif self.preset:
            self.start_run(self.preset)
        else:
            self.push_screen(PickerScreen(self.overrides, self.runs_root))

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, preset: str) -> None:
        try:
            config = load_preset(preset, self.overrides)
            run_dir = new_run_dir(config, self.runs_root)  # refuses a config whose extras are missing
        except PresetError as error:
            self.notify(str(error), title="cannot start", severity="error", timeout=30)
            return
        self._open(config, run_dir, resume=False)

    def resume_run(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        try:
            config = apply_overrides(read_run_config(run_dir), self.overrides)
        except PresetError as error:
            self.notify(str(error), title="cannot resume", severity="error", timeout=30)
            return
        if not (run_dir / CHECKPOINT).is_file():
            self.notify(f"{run_dir} has no {CHECKPOINT}; nothing to resume", severity="error", timeout=30)
            return
        self._open(config, run_dir, resume=True)

    def _open(self, config, run_dir: Path, resume: bool) -> None:
        self.engine = self.engine_factory(config, run_dir, resume)
        self.sub_title = f"{config.name} → {run_dir}"
        self.push_screen(DashboardScreen(self.engine))

    # -- actions -----------------------------------------------------------------------------
    def action_quit_run(self) -> None:
        screen = self.screen
        if isinstance(screen, DashboardScreen):
            screen.request_stop()
        elif isinstance(screen, (PickerScreen, ComparisonScreen)) or self.engine is None:
            self.exit()
        else:
            self.pop_screen()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(DashboardScreen.BINDINGS + self.BINDINGS))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for binding in screen.BINDINGS:
                action = binding.action
                yield SystemCommand(binding.tooltip or binding.description, f"key: {binding.key}",
                                    lambda action=action: self.run_action(action, screen))
        yield SystemCommand("Quit", "Stop training (final checkpoint) and quit", self.action_quit_run)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="rlr-tui", description="Watch and steer CondLR training live.")
    parser.add_argument("preset", nargs="?", help="preset name or .toml file (omit to pick one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset key, e.g. --set tau=0.5 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume a run from its directory")
    parser.add_argument("--runs", default="runs", metavar="DIR", help="where run directories go (default: runs)")
    parser.add_argument("--comparison", metavar="DIR", help="show a finished `rlr compare` directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        # Check the preset before the screen switches to the dashboard, so a mistake is one
        # plain line in the terminal.
        if args.preset and not args.resume:
            load_preset(args.preset, args.set)
        if args.resume:
            apply_overrides(read_run_config(args.resume), args.set)
        if args.comparison:
            load_comparison(args.comparison)
    except (PresetError, ComparisonError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = RlrApp(args.preset, args.set, args.runs, args.resume, comparison=args.comparison)

    def on_hangup(signum, frame) -> None:
        """The terminal went away (SSH dropped): leave the UI so the run stops cleanly."""
        try:
            asyncio.get_running_loop().call_soon_threadsafe(app.exit)
        except RuntimeError:
            app.exit()

    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGTERM, on_hangup)
    try:
        app.run()
    finally:
        # Stop first, report after: when the terminal is gone, writing to it can fail.
        if app.engine is not None and app.engine.latest().active:
            app.engine.stop(timeout=300)
    if app.engine is None:
        return 0
    snap = app.engine.latest()
    try:
        print(f"{snap.preset}: {snap.state} at step {snap.step}; run directory {snap.run_dir}")
        if snap.state == "stopped":
            print(f"resume with: rlr-tui --resume {snap.run_dir}")
        if snap.state == "failed":
            print(f"error: {snap.message}", file=sys.stderr)
    except OSError:
        pass
    return 1 if snap.state == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
