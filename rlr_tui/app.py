"""``rlr-tui``: watch and steer CondLR training live, in a terminal or a browser.

The dashboard is a thin client: every run trains in its own engine process (started detached,
so it outlives this terminal) and the app attaches to its control socket. Nothing here imports
torch."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import ModalScreen

from rlr_engine import __version__
from rlr_engine.control.client import EngineClient, EngineUnavailable
from rlr_engine.control.detached import LaunchError
from rlr_engine.control.protocol import ProtocolError
from rlr_engine.control.run_dirs import engine_alive, read_run_config, run_info
from rlr_engine.control.run_files import CHECKPOINT
from rlr_engine.control.run_plan import extension_problem
from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import load_preset, resume_config

from .engines import EngineLauncher
from .messages import AttachRun, Detach, OpenRun, StartRun
from .screens.comparison import ComparisonError, ComparisonScreen, load_comparison
from .screens.dashboard import DashboardScreen
from .screens.help import HelpScreen
from .screens.picker import PickerScreen
from .terminal_watch import TerminalWatch


class RlrApp(App):
    """Preset and run picker → dashboard of one run, attached to its engine process."""

    CSS_PATH = "app.tcss"
    TITLE = "rlr"
    BINDINGS = [
        Binding("q", "quit_run", "Quit", id="quit", tooltip="Leave: stop the run (final checkpoint) or detach"),
        Binding(
            "ctrl+c",
            "quit_run",
            "Quit",
            id="quit-ctrl-c",
            show=False,
            priority=True,
            tooltip="Leave: stop the run (final checkpoint) or detach",
        ),
        Binding("question_mark,f1", "help", "Help", id="help", tooltip="Show every key"),
    ]

    # What is being started or resumed ("" when nothing): shown until its dashboard is.
    starting: reactive[str] = reactive("", init=False)

    def __init__(
        self,
        preset: str | None = None,
        overrides: Iterable[str] = (),
        runs_root: str | Path = "runs",
        resume: str | Path | None = None,
        attach: str | Path | None = None,
        comparison: str | Path | None = None,
        launcher: EngineLauncher | None = None,
    ) -> None:
        super().__init__()
        self.comparison = comparison
        self.preset, self.overrides = preset, list(overrides)
        self.runs_root, self.resume, self.attach_to = Path(runs_root), resume, attach
        self.launcher = launcher or EngineLauncher()
        self.client: EngineClient | None = None
        self.run_dir: Path | None = None
        self.detached = False
        self.launching = False

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast is plain text, whatever ``markup`` says (screens and widgets pass Textual's
        default, True): messages come from engines, files and the user (``pip install
        'rlr[attacks]'``, ``[0, inf]``), and markup would eat their brackets."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def on_mount(self) -> None:
        if self.comparison:
            try:
                rows, attacks = load_comparison(self.comparison)
            except ComparisonError as error:
                self.notify(str(error), severity="error", timeout=30)
                self.push_screen(PickerScreen(self.overrides, self.runs_root))
                return
            self.push_screen(ComparisonScreen(self.comparison, rows, attacks))
        elif self.attach_to:
            self.attach_run(self.attach_to)
        elif self.resume:
            self.resume_run(self.resume, self.overrides)
        elif self.preset:
            self.start_run(self.preset)
        else:
            self.push_screen(PickerScreen(self.overrides, self.runs_root))

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, preset: str) -> None:
        try:
            load_preset(preset, self.overrides)
        except PresetError as error:
            self.notify(str(error), title="cannot start", severity="error", timeout=30)
            return
        self.run_worker(
            self._launch(
                lambda: self.launcher.start(preset, self.overrides, self.runs_root),
                f"starting {preset}: loading the data set…",
            ),
            group="launch",
        )

    def resume_run(self, run_dir: str | Path, overrides: Sequence[str] = ()) -> None:
        """Resume (or attach to) a run. ``overrides`` are what `rlr-tui --resume RUN --set …`
        asked for; R and the picker pass none, so what was set live since stays as it was. A
        finished run is resumed only to train on: ``epochs=N`` past its epochs (e, the picker)."""
        run_dir = Path(run_dir)
        try:
            config = resume_config(read_run_config(run_dir), overrides)
        except PresetError as error:
            self.notify(str(error), title="cannot resume", severity="error", timeout=30)
            return
        if engine_alive(run_dir):
            self.attach_run(run_dir)
            return
        info = run_info(run_dir, ask_engine=False)
        problem = extension_problem(info, config)
        if problem:  # resuming would train nothing and run its final attack again
            self.notify(f"{run_dir.name}: {problem} (e on its dashboard)", severity="warning", timeout=15)
            return
        if not (run_dir / CHECKPOINT).is_file():
            self.notify(f"{run_dir} has no {CHECKPOINT}; nothing to resume", severity="error", timeout=30)
            return
        doing = f"extending {run_dir.name} to {config.epochs} epochs" if info.finished else f"resuming {run_dir.name}"
        self.run_worker(self._launch(lambda: self.launcher.resume(run_dir, overrides), f"{doing}…"), group="launch")

    def attach_run(self, run_dir: str | Path) -> None:
        self.run_worker(self._launch(lambda: Path(run_dir), f"attaching to {Path(run_dir).name}…"), group="launch")

    async def _launch(self, start, doing: str) -> None:
        """Start (or find) the engine off the UI thread, attach, and show its dashboard; what is
        ``doing`` shows (``starting``) until the dashboard does."""
        if self.launching:
            self.notify("already starting an engine; one moment", severity="warning")
            return
        self.launching = True
        self.starting = doing
        try:
            run_dir = await asyncio.to_thread(start)
            client = await asyncio.to_thread(self.launcher.attach, run_dir)
        except (LaunchError, EngineUnavailable, ProtocolError, OSError) as error:
            self.notify(str(error), title="cannot open the run", severity="error", timeout=30)
            if not isinstance(self.screen, (PickerScreen, DashboardScreen)):
                self.push_screen(PickerScreen(self.overrides, self.runs_root))
            self.starting = ""
            return
        finally:
            self.launching = False
        if self.client is not None:
            self.client.close()
        self.client, self.run_dir = client, Path(run_dir)
        # Dialogs opened while the engine started (help, a value) belong to the screen below:
        # they close, so the new dashboard replaces the old one rather than covering it.
        while isinstance(self.screen, ModalScreen):
            self.pop_screen()
        previous = self.screen
        # A dashboard that told of its engine's death hands the toast on: the new one takes it
        # away once the run trains again.
        dashboard = DashboardScreen(
            client, run_dir, death_told=isinstance(previous, DashboardScreen) and previous.death_told
        )
        if isinstance(previous, DashboardScreen):
            self.switch_screen(dashboard)
        else:
            self.push_screen(dashboard)
        self.starting = ""

    def detach(self) -> None:
        """Leave the run training without this dashboard."""
        self.detached = True
        self.exit()

    # -- what the screens ask for ------------------------------------------------------------
    @on(StartRun)
    def start_asked(self, message: StartRun) -> None:
        self.start_run(message.preset)

    @on(OpenRun)
    def open_asked(self, message: OpenRun) -> None:
        self.resume_run(message.run_dir, message.overrides)

    @on(AttachRun)
    def attach_asked(self, message: AttachRun) -> None:
        self.attach_run(message.run_dir)

    @on(Detach)
    def detach_asked(self, message: Detach) -> None:
        self.detach()

    # -- actions -----------------------------------------------------------------------------
    def action_quit_run(self) -> None:
        if len(self.screen_stack) < 2:  # nothing over the default screen: starting, or closing down
            self.exit()
            return
        screen = self.screen
        if isinstance(screen, DashboardScreen):
            screen.request_quit()
        elif isinstance(screen, (PickerScreen, ComparisonScreen)) or self.client is None:
            self.exit()
        else:
            self.pop_screen()  # a dialog or the help over the dashboard

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen([b for b in (*DashboardScreen.BINDINGS, *self.BINDINGS) if isinstance(b, Binding)]))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for binding in screen.BINDINGS:
                action = binding.action
                yield SystemCommand(
                    binding.tooltip or binding.description,
                    f"key: {binding.key}",
                    lambda action=action: self.run_action(action, screen),
                )
        yield SystemCommand("Quit", "Leave: stop the run (final checkpoint) or detach", self.action_quit_run)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="rlr-tui", description="Watch and steer CondLR training live.")
    parser.add_argument("--version", action="version", version=f"rlr-tui {__version__}")
    parser.add_argument("preset", nargs="?", help="preset name or .toml file (omit to pick one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. --set tau=0.5 (repeatable)",
    )
    parser.add_argument("--attach", metavar="RUN_DIR", help="attach to a running run")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume a stopped (or dead) run from its directory")
    parser.add_argument("--runs", default="runs", metavar="DIR", help="where run directories go (default: runs)")
    parser.add_argument("--comparison", metavar="DIR", help="show a finished `rlr compare` directory")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the dashboard to a browser (textual-serve) on 127.0.0.1; reach it with ssh -L",
    )
    parser.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel on N processes (torch.distributed; one GPU each on CUDA)",
    )
    return parser.parse_args(argv)


def serve(argv: list[str], port: int) -> int:
    """Serve ``rlr-tui ARGV`` through textual-serve on 127.0.0.1:PORT. Each browser tab gets its
    own app process; they are thin clients, so every tab attaches to the same engines."""
    try:
        from textual_serve.server import Server
    except ImportError:
        print("error: --serve needs textual-serve (pip install 'rlr[serve]')", file=sys.stderr)
        return 2
    if not 1 <= port <= 65535:
        print(f"error: --port {port}: must be in 1..65535", file=sys.stderr)
        return 2
    command = shlex.join([sys.executable, "-m", "rlr_tui.app", *argv])
    print(
        f"serving the dashboard on http://127.0.0.1:{port} (from another machine: ssh -L {port}:127.0.0.1:{port} HOST)",
        flush=True,
    )
    Server(command, host="127.0.0.1", port=port, title="rlr").serve()
    return 0


def farewell(snap, died: bool, run_dir) -> list[tuple[str, bool]]:
    """What the terminal says once the dashboard closes: (line, is an error) pairs."""
    if snap is None:
        return []
    if died:
        return [
            (
                f"{snap.preset}: the engine process died; last good checkpoint at step "
                f"{snap.last_checkpoint_step}. Resume with: rlr-tui --resume {run_dir}",
                False,
            )
        ]
    if snap.active:
        goes_on = "the run stays paused" if snap.state == "paused" else "training continues"
        return [
            (
                f"{snap.preset}: detached at step {snap.step}; {goes_on}. "
                f"Attach again with: rlr-tui --attach {run_dir}",
                False,
            )
        ]
    lines = [(f"{snap.preset}: {snap.state} at step {snap.step}; run directory {run_dir}", False)]
    if snap.state == "stopped":
        lines.append((f"resume with: rlr-tui --resume {run_dir}", False))
    if snap.state == "failed":
        lines.append((f"error: {snap.message}", True))
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        # Check the preset before the screen switches to the dashboard, so a mistake is one
        # plain line in the terminal.
        if args.preset and not args.resume and not args.attach:
            load_preset(args.preset, args.set)
        if args.resume:
            problem = extension_problem(
                run_info(args.resume, ask_engine=False), resume_config(read_run_config(args.resume), args.set)
            )
            if problem:
                raise PresetError(f"--resume {args.resume}: {problem}")
        if args.attach:
            read_run_config(args.attach)
        if args.comparison:
            load_comparison(args.comparison)
    except (PresetError, ComparisonError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.nproc < 1:
        print(f"error: --nproc {args.nproc}: must be >= 1 (processes to train on)", file=sys.stderr)
        return 2
    if args.serve:
        rest = [a for a in argv if a != "--serve"]
        if "--port" in rest:
            i = rest.index("--port")
            del rest[i : i + 2]
        rest = [a for a in rest if not a.startswith("--port=")]
        return serve(rest, args.port)
    app = RlrApp(
        args.preset,
        args.set,
        args.runs,
        args.resume,
        args.attach,
        comparison=args.comparison,
        launcher=EngineLauncher(nproc=args.nproc),
    )

    def on_hangup(signum: int) -> None:
        """The terminal went away (SSH dropped) or we were told to end: detach; the run trains
        on. The watch ends the process if the app cannot exit in time (terminal_watch.py)."""
        app.detached = True
        try:
            asyncio.get_running_loop().call_soon_threadsafe(app.exit)
        except RuntimeError:
            app.exit()

    TerminalWatch(on_hangup).install()
    died = False
    try:
        app.run()
    finally:
        if app.client is not None:
            died = app.client.engine_died
            app.client.close()
    if app.client is None:
        return 0
    snap = app.client.latest()
    try:
        for line, is_error in farewell(snap, died, app.run_dir):
            print(line, file=sys.stderr if is_error else sys.stdout)
    except OSError:
        pass
    return 1 if snap is not None and snap.state == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
