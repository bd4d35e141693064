"""The live dashboard of one run: a client of the engine process. It polls the client's newest
snapshot and acknowledgements (never blocking, never called from another thread) and sends
commands; every command's outcome is shown from the engine's acknowledgement."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, TabbedContent, TabPane, Tabs

from rlr_engine.control.client import EngineUnavailable
from rlr_engine.control.protocol import ENGINE_SESSION
from rlr_engine.control.records import (
    AttackNow,
    Note,
    Pause,
    Resume,
    SaveCheckpoint,
    SetAdaptation,
    SetLearningRate,
    SetTau,
    Snapshot,
    Stop,
    Truncate,
    Undo,
)
from rlr_engine.control.run_dirs import engine_alive, read_engine_info
from rlr_engine.core.validation import (
    ADAPT_EVERY,
    BETA,
    LR,
    TAU,
    THETA,
    check_adapt_every,
    check_beta,
    check_lr,
    check_tau,
    check_theta,
)

from ..format import num
from ..messages import AttachRun, Detach, OpenRun
from ..widgets.curves import CurvesPlot
from ..widgets.event_log import EventLog
from ..widgets.kappa_table import KappaTable
from ..widgets.rank_bars import RankBars
from ..widgets.robustness import AccuracyHistory, AccuracyVsEps
from ..widgets.spectrum import SpectrumInfo, SpectrumPlot
from ..widgets.starting_notice import StartingNotice
from ..widgets.status_bar import StatusBar
from .attack_dialog import AttackDialog
from .extend import extend_dialog
from .quit import QuitScreen
from .value_dialog import ValueDialog

POLL_INTERVAL_S = 0.25
PLOT_INTERVAL_S = 0.5  # plotext redraws cost 40–110 ms: at most 2 Hz, visible tab only
TAB_FOCUS = {"spectrum": "#kappa-table", "events": "#event-log"}  # tab → the widget that gets the keys
REATTACH_INTERVAL_S = 2.0  # how often a dead or stopped run's dashboard looks for a new engine there
# Actions that steer the engine: they need a live run, and none is sent once a stop was asked for.
STEERING = (
    "set_tau",
    "truncate",
    "pause",
    "resume",
    "attack",
    "set_beta",
    "set_window",
    "set_lr",
    "checkpoint",
    "undo",
)


class DashboardScreen(Screen):
    """Status bar, tabs (training curves, ranks, spectrum + κ table, robustness, events), footer."""

    # At 80 columns the footer holds the keys a user needs first (quit and help come from the
    # app and are shown first); the rest are in the help screen (?) and the command palette.
    BINDINGS = [
        Binding("t", "set_tau", "τ", id="set-tau", tooltip="Set τ, the conditioning tolerance (κ ≤ 1+τ)"),
        Binding("r", "truncate", "Truncate", id="truncate", tooltip="Set θ and truncate every layer now"),
        Binding("space", "pause", "Pause", id="pause", tooltip="Pause training"),
        Binding("space", "resume", "Resume", id="resume", tooltip="Resume training"),
        Binding(
            "R",
            "resume_run",
            "Resume run",
            id="resume-run",
            tooltip="Start the engine again from the last checkpoint (after it died or stopped)",
        ),
        Binding("a", "attack", "Attack", id="attack", tooltip="Pick an attack and run it now on the live subset"),
        Binding(
            "u",
            "undo",
            "Undo",
            id="undo",
            show=False,
            tooltip="Undo the last truncation, τ, lr, θ or β change (weights and optimizer state come back)",
        ),
        Binding(
            "e",
            "extend",
            "Extend",
            id="extend",
            tooltip="Add epochs to a finished run: it trains on from its final checkpoint",
        ),
        Binding(
            "b",
            "set_beta",
            "β",
            id="set-beta",
            show=False,
            tooltip="Set β, the soft conditioning weight of a rank-adaptive run",
        ),
        Binding(
            "k",
            "set_window",
            "Window",
            id="set-window",
            show=False,
            tooltip="Set the window of a rank-adaptive run (batches between rank changes)",
        ),
        Binding("c", "checkpoint", "Ckpt", id="checkpoint", show=False, tooltip="Save a checkpoint now"),
        Binding("l", "set_lr", "LR", id="set-lr", show=False, tooltip="Change the learning rate"),
        Binding(
            "s",
            "screenshot",
            "Shot",
            id="screenshot",
            show=False,
            tooltip="Save an SVG screenshot into the run directory",
        ),
        Binding("left_square_bracket", "layer(-1)", "◂Layer", id="prev-layer", show=False, tooltip="Previous layer"),
        Binding("right_square_bracket", "layer(1)", "Layer▸", id="next-layer", show=False, tooltip="Next layer"),
        Binding("g", "toggle_log", "log σ", id="log-scale", show=False, tooltip="Histogram of σ or of log10 σ"),
        Binding("1", "tab('training')", "Curves", id="tab-training", show=False, tooltip="Loss and accuracy tab"),
        Binding("2", "tab('ranks')", "Ranks", id="tab-ranks", show=False, tooltip="Rank per layer tab"),
        Binding("3", "tab('spectrum')", "Spectrum", id="tab-spectrum", show=False, tooltip="Singular values and κ tab"),
        Binding(
            "4", "tab('robustness')", "Robust", id="tab-robustness", show=False, tooltip="Adversarial accuracy tab"
        ),
        Binding("5", "tab('events')", "Events", id="tab-events", show=False, tooltip="Event log tab"),
    ]

    # The state the last pause or resume asked for, until the engine has answered it and its
    # snapshot shows it: space toggles relative to this, so a quick second press is not a repeat.
    pending = reactive[str | None](None, init=False)
    # A stop was sent: the run is ending, so nothing else is sent and no dialog opens.
    stopping = reactive(False, init=False)

    def __init__(self, client, run_dir: str | Path, death_told: bool = False) -> None:
        """``death_told``: a toast says the run's engine died (the dashboard this one replaces
        showed it); it is taken away once the run trains again."""
        super().__init__()
        self.client = client
        self.run_dir = Path(run_dir)
        self.snapshot: Snapshot = client.latest() or Snapshot(run_dir=str(run_dir))
        self.selected_layer = 0
        self.log_scale = False
        self.exit_when_ended = False
        self._seen_version = -1
        self.death_told = death_told
        self._plotted: dict[str, tuple[int, float]] = {}
        self._toggle_request: str | None = None  # request id of the pending pause or resume
        self._toggle_answered = False
        self._told_stopping = False

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield StartingNotice(id="starting")
        with TabbedContent(initial="training", id="tabs"):
            with TabPane("1 Curves", id="training"):
                with Horizontal():
                    yield CurvesPlot("loss", id="loss-plot")
                    yield CurvesPlot("accuracy", id="accuracy-plot")
            with TabPane("2 Ranks", id="ranks"):
                yield RankBars(id="rank-bars")
            with TabPane("3 Spectrum", id="spectrum"):
                with Horizontal():
                    yield KappaTable(id="kappa-table")
                    with Vertical():
                        yield SpectrumInfo(id="spectrum-info")
                        yield SpectrumPlot(id="spectrum-plot")
            with TabPane("4 Robustness", id="robustness"):
                with Horizontal():
                    yield AccuracyVsEps(id="eps-plot")
                    yield AccuracyHistory(id="history-plot")
            with TabPane("5 Events", id="events"):
                yield EventLog(id="event-log", max_lines=2000, wrap=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.set_interval(POLL_INTERVAL_S, self.poll)
        self.set_interval(REATTACH_INTERVAL_S, self.reattach_if_engine_back)
        self.poll()

    def watch_pending(self) -> None:
        self.refresh_bindings()

    def watch_stopping(self) -> None:
        self.refresh_bindings()

    # -- reading snapshots -------------------------------------------------------------------
    def poll(self) -> None:
        """Read the client's newest snapshot and acknowledgements and redraw what changed."""
        if self not in self.app.screen_stack or not self.query(EventLog):
            return  # replaced by the dashboard of a new engine, or the app is closing: its widgets are going
        client = self.client
        for ack in client.take_acks():
            self.show_ack(ack)
        for error in client.take_errors():
            self.notify(error, title="engine", severity="warning", timeout=8)
        snap = client.latest()
        if snap is None:
            snap = self.snapshot
        gone = client.engine_died and snap.active
        if gone:
            checkpoint = (
                "no checkpoint yet"
                if snap.last_checkpoint_step is None
                else f"last checkpoint: step {snap.last_checkpoint_step}"
            )
            # Short enough for the status bar at 80 columns; the toast says why it is gone.
            snap = replace(
                snap, state="dead", eta_s=None, samples_per_s=0.0, message=f"engine gone; {checkpoint}; R resumes"
            )
        elif not client.connected and snap.active and not client.closed:
            snap = replace(snap, state=client.ended_state or "stopped", eta_s=None, samples_per_s=0.0)
        if self.pending is not None and (not snap.active or (self._toggle_answered and snap.state == self.pending)):
            self.pending = None
        if snap.version == self._seen_version and snap.state == self.snapshot.state:
            return
        changed_state = snap.state != self.snapshot.state
        self.snapshot, self._seen_version = snap, snap.version
        with self.app.batch_update():
            self.query_one(StatusBar).show(snap)
            self.query_one(EventLog).show(snap.events)
            self.redraw_active_tab()
        # The method names τ, which a command may change without the state changing.
        self.app.sub_title = f"{snap.preset} ({snap.method}) → {self.run_dir}"
        if changed_state:
            self.refresh_bindings()
        if gone and not self.death_told:
            self.death_told = True
            self.notify(
                f"engine process gone ({client.lost_reason}); {snap.message}",
                title="the engine died",
                severity="error",
                timeout=60,
            )
        elif self.death_told and snap.state == "running":
            self.death_told = False  # R (or a resume elsewhere) has it training again
            self.app.clear_notifications()
        elif changed_state and snap.state == "failed":
            self.notify(snap.message, title="run failed", severity="error", timeout=30)
        elif changed_state and snap.state == "finished":
            self.notify(f"finished; results in {snap.run_dir}", title="run finished")
        if self.exit_when_ended and not snap.active:
            self.app.exit()

    def show_ack(self, ack) -> None:
        """The engine's answer to a command: from this dashboard, or from another one attached."""
        if ack.kind == Note.kind and ack.applied:
            return  # a note is for the record, not for a toast
        mine = ack.session == self.client.session
        if mine and self._toggle_request is not None and ack.request_id == self._toggle_request:
            self._toggle_answered = True
            if not ack.applied:
                self.pending = None
        # session 0 is no client: the engine itself (a stop on a signal says which one)
        who = "" if mine or ack.session == ENGINE_SESSION else " (from another client)"
        if ack.applied:
            self.notify(f"{ack.message}{who}", timeout=4)
        elif mine:
            self.notify(ack.message, title=f"{ack.kind} rejected", severity="error", timeout=10)

    def redraw_active_tab(self, force: bool = False) -> None:
        tab = self.query_one(TabbedContent).active
        now = time.monotonic()
        last_version, last_time = self._plotted.get(tab, (-1, 0.0))
        if not force and (last_version == self.snapshot.version or now - last_time < PLOT_INTERVAL_S):
            return
        self._plotted[tab] = (self.snapshot.version, now)
        snap = self.snapshot
        if tab == "training":
            self.query_one("#loss-plot", CurvesPlot).show(snap)
            self.query_one("#accuracy-plot", CurvesPlot).show(snap)
        elif tab == "ranks":
            self.query_one(RankBars).show(snap)
        elif tab == "spectrum":
            self.query_one(KappaTable).show(snap.layers, self.selected_layer)
            self.show_spectrum()
        elif tab == "robustness":
            self.query_one(AccuracyVsEps).show(snap)
            self.query_one(AccuracyHistory).show(snap)

    def show_spectrum(self) -> None:
        layers = self.snapshot.layers
        layer = layers[min(self.selected_layer, len(layers) - 1)] if layers else None
        self.query_one(SpectrumInfo).show(layer)
        self.query_one(SpectrumPlot).show(layer, self.log_scale)

    @on(TabbedContent.TabActivated)
    def on_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Redraw the new tab and give the keyboard to what it holds that scrolls or selects (the
        κ table, the event log), so Up, PageUp, Home work at once; other tabs focus the tab strip."""
        self.redraw_active_tab(force=True)
        focus = TAB_FOCUS.get(event.pane.id or "")
        (self.query_one(focus) if focus else event.tabbed_content.query_one(Tabs)).focus()

    @on(DataTable.RowHighlighted, "#kappa-table")
    def on_layer_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != self.selected_layer:
            self.selected_layer = event.cursor_row
            self.show_spectrum()

    # -- steering ------------------------------------------------------------------------------
    def send(self, command) -> str | None:
        """Send a command; its acknowledgement (applied, or rejected with the reason) is shown
        when the engine answers. Nothing is sent to a run that ended or is stopping (a dialog
        may have been open while it did): the user is told why. The request id, or None."""
        refusal = self.steering_refusal()
        if refusal is not None:
            self.notify(refusal, severity="warning")
            return None
        try:
            return self.client.send(command)
        except EngineUnavailable:
            self.notify(
                "the engine is gone; nothing was sent. R resumes the run from its last checkpoint", severity="error"
            )
            return None

    def steering_refusal(self) -> str | None:
        """Why no command can be sent now, or None when one can."""
        if self.stopping:
            return "stopping: the final checkpoint is being written; no more commands"
        state = self.snapshot.state
        if state in ("dead", "stopped"):
            return f"the run is {state}; R resumes"
        if not self.snapshot.active:
            return f"the run is {state}; there is nothing to steer"
        return None

    def check_action(self, action: str, parameters) -> bool | None:
        state = self.pending or self.snapshot.state
        if action in STEERING:
            if self.stopping:
                return False
            if not self.snapshot.active:
                # Shown dimmed (space once: as Pause); pressing one says why (on_key).
                return False if action in ("resume", "set_beta", "set_window") else None
        if action == "pause":
            return state != "paused"
        if action == "resume":
            return state == "paused"
        if action == "resume_run":
            return self.snapshot.state in ("dead", "stopped") and not self.stopping
        if action == "extend":
            return self.snapshot.state == "finished"
        if action in ("set_beta", "set_window"):
            return self.snapshot.adapt_every is not None  # rank-adaptive runs only
        return True

    def on_key(self, event) -> None:
        """A steering key the bindings refused (the run ended, or is stopping): say why."""
        refusal = self.steering_refusal()
        if refusal is None:
            return
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and binding.action in STEERING and event.key in binding.key.split(","):
                event.stop()
                self.notify(refusal, severity="warning")
                return

    def reattach_if_engine_back(self) -> None:
        """A dead or stopped run may be resumed elsewhere (another dashboard pressed R, or
        ``rlr train --resume``): attach to the new engine once one lives in the run directory."""
        if self.snapshot.state not in ("dead", "stopped") or self.stopping or self not in self.app.screen_stack:
            return
        if any(worker.group == "launch" and worker.is_running for worker in self.app.workers):
            return  # R here (or the picker) is starting one already
        if not engine_alive(self.run_dir) or read_engine_info(self.run_dir).get("pid") == self.client.pid:
            return  # no engine, or the one this dashboard saw is still on its way out
        self.notify("an engine runs this run again; attaching", timeout=5)
        self.post_message(AttachRun(self.run_dir))

    def ask_then_send(self, title: str, prompt: str, initial: str, check, command) -> None:
        """Ask for one value in a dialog that validates it with ``check`` (a refused value is
        recorded as a note and changes nothing); send ``command(value)`` once it is accepted."""

        def apply(value) -> None:
            if value is not None:
                self.send(command(value))

        self.app.push_screen(ValueDialog(title, prompt, initial, check, self.note_rejected), apply)

    def action_set_tau(self) -> None:
        self.ask_then_send(
            "Set τ", f"κ(S) ≤ 1 + τ for every layer; {TAU.allowed()}.", num(self.snapshot.tau, 6), check_tau, SetTau
        )

    def action_truncate(self) -> None:
        self.ask_then_send(
            "Truncate now",
            f"Relative tolerance θ: keep the smallest rank whose discarded σ have norm ≤ θ‖σ‖; {THETA.allowed()}.",
            num(self.snapshot.theta, 6),
            check_theta,
            lambda theta: Truncate(theta=theta),
        )

    def action_set_beta(self) -> None:
        self.ask_then_send(
            "Set β",
            f"Weight of the soft conditioning term β‖SSᵀ − (‖S‖²/r)I‖ added to the loss; {BETA.allowed()}.",
            num(self.snapshot.beta, 6),
            check_beta,
            lambda beta: SetAdaptation(beta=beta),
        )

    def action_set_window(self) -> None:
        self.ask_then_send(
            "Set the window",
            "Augment on the first batch of each window, truncate with θ on its "
            f"last; {ADAPT_EVERY.allowed('an integer')}.",
            str(self.snapshot.adapt_every),
            check_adapt_every,
            lambda window: SetAdaptation(adapt_every=window),
        )

    def action_set_lr(self) -> None:
        self.ask_then_send(
            "Learning rate", f"{LR.allowed().capitalize()}.", num(self.snapshot.lr, 6), check_lr, SetLearningRate
        )

    def action_pause(self) -> None:
        self.toggle(Pause(), "paused")

    def action_resume(self) -> None:
        self.toggle(Resume(), "running")

    def toggle(self, command, target: str) -> None:
        request = self.send(command)
        if request is not None:
            self._toggle_request, self._toggle_answered = request, False
            self.pending = target

    def action_resume_run(self) -> None:
        self.post_message(OpenRun(self.run_dir))

    def action_undo(self) -> None:
        self.send(Undo())

    def action_extend(self) -> None:
        """Ask how many epochs to add, then resume the finished run with ``epochs`` raised."""

        def extend(epochs: int | None) -> None:
            if epochs is not None:
                self.post_message(OpenRun(self.run_dir, [f"epochs={epochs}"]))

        self.app.push_screen(extend_dialog(self.run_dir.name, self.snapshot.epochs), extend)

    def action_attack(self) -> None:
        def apply(name) -> None:
            if name is not None:
                self.send(AttackNow(attack=name))

        current = self.snapshot.adversarial.attack if self.snapshot.adversarial else None
        self.app.push_screen(AttackDialog(current), apply)

    def action_checkpoint(self) -> None:
        self.send(SaveCheckpoint())

    def note_rejected(self, value: str, reason: str) -> None:
        """A value a dialog refused goes into the run's events too (nothing else changes)."""
        self.send(Note("rejected", f"typed {value!r}: {reason}"))

    def action_screenshot(self) -> None:
        directory = self.run_dir
        name = time.strftime("dashboard-%Y%m%d-%H%M%S.svg")
        path = self.app.save_screenshot(filename=name, path=str(directory))
        self.notify(f"screenshot saved: {path}")
        if self.steering_refusal() is None:
            self.send(Note("info", f"screenshot saved: {path}"))

    def action_layer(self, delta: int) -> None:
        count = len(self.snapshot.layers)
        if not count:
            return
        self.selected_layer = (self.selected_layer + delta) % count
        table = self.query_one(KappaTable)
        if table.row_count:
            table.move_cursor(row=self.selected_layer, animate=False)
        self.show_spectrum()

    def action_toggle_log(self) -> None:
        self.log_scale = not self.log_scale
        self.show_spectrum()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def request_quit(self) -> None:
        """Leave: for a live run, ask whether to stop it (final checkpoint) or detach from it."""
        if not self.snapshot.active or not self.client.connected:
            self.app.exit()
            return
        if self.stopping:  # the engine is writing its final checkpoint; a second q leaves at once
            if self._told_stopping:
                self.app.exit()
                return
            self._told_stopping = True
            self.notify(
                "stopping: the final checkpoint is being written; the dashboard closes once it is (q again leaves now)",
                timeout=10,
            )
            return

        def answer(choice: str | None) -> None:
            if choice == "stop" and not self.stopping:
                if self.send(Stop()) is None:
                    return
                self.notify("stopping: writing the final checkpoint…", timeout=10)
                self.exit_when_ended = True
                self.stopping = True
            elif choice == "detach":
                self.post_message(Detach())

        self.app.push_screen(QuitScreen(), answer)
