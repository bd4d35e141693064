"""Pilot tests of the dashboard against a scripted client (fast, deterministic: layout snapshots,
keys, acknowledgements, a dead engine), and one end to end against a real engine process."""

import weakref
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import NamedTuple

import pytest
from fake_client import FakeClient, FakeLauncher, scripted_snapshot
from pilot_waits import screen_lines, settle, until
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import TabbedContent, Tabs

from rlr_engine.control.records import Pause, Resume, SetTau, Stop, Truncate
from rlr_tui.app import RlrApp
from rlr_tui.screens.dashboard import DashboardScreen
from rlr_tui.screens.help import HelpScreen
from rlr_tui.screens.picker import PickerScreen
from rlr_tui.screens.quit import QuitScreen
from rlr_tui.screens.value_dialog import ValueDialog
from rlr_tui.widgets.event_log import EventLog
from rlr_tui.widgets.status_bar import StatusBar


async def type_value(pilot, text):
    """Type ``text`` into the open value dialog and press Enter; returns once the dialog has
    closed (and its value was handed on) or shows why it refused the value."""
    dialog = pilot.app.screen
    assert isinstance(dialog, ValueDialog)
    dialog.query_one("Input").value = ""
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: pilot.app.screen is not dialog or str(dialog.query_one("#error").render()))
    await settle(pilot)


def status_text(app) -> str:
    bars = app.screen.query(StatusBar)  # none while a new dashboard is being composed
    return str(bars.first().render()) if bars else ""


def bottom_line(app) -> str:
    lines = screen_lines(app)
    return lines[-1] if lines else ""  # nothing drawn yet


# Every notification each app showed, as "title: message", kept after its toast has timed out
# (a loaded machine can take longer than a toast's timeout to get to the assertion), until the app
# clears its notifications.
SHOWN: weakref.WeakKeyDictionary[App, list[str]] = weakref.WeakKeyDictionary()


@pytest.fixture(autouse=True)
def _keep_notifications(monkeypatch):
    notify = App.notify

    def keeping(self, message, *, title="", **options):
        SHOWN.setdefault(self, []).append(f"{title}: {message}")
        return notify(self, message, title=title, **options)

    monkeypatch.setattr(App, "notify", keeping)
    clear = App.clear_notifications

    def clearing(self):
        SHOWN.pop(self, None)
        return clear(self)

    monkeypatch.setattr(App, "clear_notifications", clearing)


def notifications(app) -> list[str]:
    return list(SHOWN.get(app, ()))


def active_tab(app) -> str | None:
    return app.screen.query_one(TabbedContent).active


def dashboard_ready(app) -> bool:
    """The dashboard is the screen and done mounting: its tab strip has mounted and chosen a
    tab, and its status bar shows a snapshot."""
    screen = app.screen
    if not isinstance(screen, DashboardScreen):
        return False
    tabs = screen.query(Tabs)
    return bool(tabs) and all(t.is_mounted and t.active for t in tabs) and bool(status_text(app).strip())


def fake_app(tmp_path, client=None, attach=False, overrides=()):
    """The app with a scripted engine behind its public launcher seam: it starts (or attaches to)
    ``tmp_path / "fake-run"`` and creates nothing anywhere."""
    client = client or FakeClient()
    launcher = FakeLauncher(client, tmp_path / "fake-run")
    if attach:
        return RlrApp(None, [], tmp_path / "runs", attach=tmp_path / "fake-run", launcher=launcher), client, launcher
    return RlrApp("quickstart", list(overrides), tmp_path / "runs", launcher=launcher), client, launcher


class Dashboard(NamedTuple):
    app: RlrApp
    pilot: Pilot
    client: FakeClient
    launcher: FakeLauncher


@asynccontextmanager
async def dashboard(tmp_path, client=None, size=(80, 24), overrides=(), toasts=False):
    """``rlr-tui quickstart`` on a scripted client, once its dashboard shows. The launcher starts
    nothing, so the runs root must never be created. ``toasts``: draw notifications (they are
    recorded either way)."""
    app, client, launcher = fake_app(tmp_path, client, overrides=overrides)
    async with app.run_test(size=size, notifications=toasts) as pilot:
        await until(pilot, lambda: dashboard_ready(app))
        yield Dashboard(app, pilot, client, launcher)
    assert not (tmp_path / "runs").exists(), "the dashboard created a run directory of its own"


async def test_keys_send_commands_to_the_engine(tmp_path):
    async with dashboard(tmp_path) as d:
        await d.pilot.press("space")
        await d.pilot.press("t")
        await type_value(d.pilot, "0.25")
        await d.pilot.press("r")
        await type_value(d.pilot, "0.3")
        assert d.client.commands == [Pause(), SetTau(0.25), Truncate(theta=0.3)]
        assert d.launcher.calls[0] == ("start", "quickstart")


async def test_a_rejected_command_shows_the_engines_reason_not_a_success(tmp_path):
    client = FakeClient(reply=lambda c: ("rejected", "tau must be a number in [0, inf], got 7 (engine says no)"))
    async with dashboard(tmp_path, client) as d:
        await d.pilot.press("t")
        await type_value(d.pilot, "7")
        await until(d.pilot, lambda: any("engine says no" in n for n in notifications(d.app)))
        shown = [n for n in notifications(d.app) if "set_tau" in n]
        assert shown and all("rejected" in n for n in shown)


async def test_an_acknowledgement_from_another_dashboard_is_shown(tmp_path):
    async with dashboard(tmp_path) as d:
        d.client.ack_from_other("set_tau", "τ: 0.1 → 0.7")
        await until(d.pilot, lambda: any("τ: 0.1 → 0.7 (from another client)" in n for n in notifications(d.app)))
        # session 0 is the engine's own process: a stop on a signal came from no client
        d.client.ack_from_other("stop", "stopping at step 9 (SIGTERM received): writing a final checkpoint", session=0)
        await until(
            d.pilot,
            lambda: any(n.endswith("(SIGTERM received): writing a final checkpoint") for n in notifications(d.app)),
        )


async def test_while_paused_the_footer_offers_resume_and_the_header_shows_no_rate_or_eta(tmp_path):
    # The last rate and ETA of the running engine are still in the snapshot: the header must not
    # show them while nothing trains.
    client = FakeClient(replace(scripted_snapshot(), state="paused", samples_per_s=4321.0, eta_s=754.0))
    async with dashboard(tmp_path, client, size=(100, 24)) as d:
        await until(d.pilot, lambda: "PAUSED" in status_text(d.app))
        footer = {b.binding.description for b in d.app.active_bindings.values() if b.enabled}
        assert "Resume" in footer and "Pause" not in footer
        status = status_text(d.app)
        assert "PAUSED" in status and "/s" not in status and "ETA" not in status, status
        await d.pilot.press("space")
        assert d.client.commands == [Resume()]
        d.client.snapshot = replace(d.client.snapshot, state="running", version=2)
        await until(d.pilot, lambda: "4,321/s" in status_text(d.app) and "ETA 12:34" in status_text(d.app))
        footer = {b.binding.description for b in d.app.active_bindings.values() if b.enabled}
        assert "Pause" in footer and "Resume" not in footer


async def test_the_title_follows_tau_when_it_changes(tmp_path):
    async with dashboard(tmp_path) as d:
        await until(d.pilot, lambda: "CondLR τ=0.1" in d.app.sub_title)
        d.client.snapshot = replace(d.client.snapshot, method="CondLR τ=0.5", tau=0.5, version=2)
        await until(d.pilot, lambda: "τ 0.5" in status_text(d.app))
        assert "CondLR τ=0.5" in d.app.sub_title and "τ=0.1" not in d.app.sub_title
        assert "CondLR τ=0.5" in status_text(d.app) and "τ=0.1" not in status_text(d.app)


async def test_quit_offers_stop_detach_and_cancel(tmp_path):
    async with dashboard(tmp_path) as d:
        await d.pilot.press("q")
        assert isinstance(d.app.screen, QuitScreen)
        await d.pilot.press("escape")
        assert isinstance(d.app.screen, DashboardScreen) and d.client.commands == []
        await d.pilot.press("q", "s")
        assert d.client.commands == [Stop()]
        assert d.app.is_running  # it waits for the engine to say the run stopped
        d.client.snapshot = replace(d.client.snapshot, state="stopped", version=99)
        await until(d.pilot, lambda: not d.app.is_running)
    async with dashboard(tmp_path) as d:
        await d.pilot.press("q", "d")
        await until(d.pilot, lambda: not d.app.is_running)
    assert d.app.detached and d.client.commands == []


async def test_a_dead_engine_is_reported_with_the_last_checkpoint_and_r_resumes(tmp_path):
    from rlr_engine.core.presets import dump_toml, load_preset

    client = FakeClient(replace(scripted_snapshot(), last_checkpoint_step=1600))
    (tmp_path / "fake-run").mkdir()
    async with dashboard(tmp_path, client, size=(100, 30), overrides=["tau=0.5"]) as d:
        d.client.die()
        await until(d.pilot, lambda: "DEAD" in status_text(d.app))
        assert any("step 1600" in n and "R resumes" in n for n in notifications(d.app))
        (tmp_path / "fake-run" / "config.toml").write_text(dump_toml(load_preset("quickstart")))
        (tmp_path / "fake-run" / "checkpoint.pt").write_bytes(b"x")
        await d.pilot.press("R")
        await until(d.pilot, lambda: ("resume", tmp_path / "fake-run") in d.launcher.calls)
        # the start-up --set is not set again over what was set live since (a τ typed with t)
        assert d.launcher.resume_overrides == [[]]


async def test_resume_on_the_command_line_passes_its_settings_once(tmp_path):
    from rlr_engine.core.presets import dump_toml, load_preset

    run_dir = tmp_path / "fake-run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(dump_toml(load_preset("quickstart")))
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    launcher = FakeLauncher(FakeClient(), run_dir)
    app = RlrApp(None, ["tau=0.3"], tmp_path / "runs", resume=run_dir, launcher=launcher)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
    assert launcher.resume_overrides == [["tau=0.3"]]


@pytest.mark.parametrize("ticks", range(8))
async def test_a_dashboard_closed_while_it_mounts_exits_cleanly(tmp_path, monkeypatch, ticks):
    """Closing the app (q at the picker, SIGTERM, a closed terminal) in the moments after the
    dashboard was pushed, while its widgets mount, ends the app without an error."""
    import asyncio

    (tmp_path / "fake-run").mkdir()
    app = RlrApp(
        None,
        [],
        tmp_path / "runs",
        attach=tmp_path / "fake-run",
        launcher=FakeLauncher(FakeClient(), tmp_path / "fake-run"),
    )
    push_screen = RlrApp.push_screen

    def push_then_exit(self, screen, *args, **kwargs):
        pushed = push_screen(self, screen, *args, **kwargs)
        if isinstance(screen, DashboardScreen):

            async def exit_after_ticks():
                for _ in range(ticks):
                    await asyncio.sleep(0)
                self.exit()

            self.run_worker(exit_after_ticks())
        return pushed

    monkeypatch.setattr(RlrApp, "push_screen", push_then_exit)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0


async def test_screenshot_help_and_layer_keys(tmp_path):
    (tmp_path / "fake-run").mkdir()
    async with dashboard(tmp_path) as d:
        await d.pilot.press("s")
        await until(d.pilot, lambda: list((tmp_path / "fake-run").glob("dashboard-*.svg")))
        await d.pilot.press("3")
        table, layers = d.app.screen.query_one("#kappa-table"), d.client.snapshot.layers
        await until(d.pilot, lambda: active_tab(d.app) == "spectrum" and table.row_count == len(layers))
        await settle(d.pilot)
        await d.pilot.press("right_square_bracket")
        assert d.app.screen.selected_layer == 1
        await d.pilot.press("left_square_bracket", "left_square_bracket")
        assert d.app.screen.selected_layer == len(d.client.snapshot.layers) - 1
        await d.pilot.press("question_mark")
        assert isinstance(d.app.screen, HelpScreen)
        await d.pilot.press("escape")
        assert isinstance(d.app.screen, DashboardScreen)


@pytest.mark.slow
async def test_the_events_tab_scrolls_back_by_keyboard_while_events_arrive(tmp_path):
    from rlr_engine.control.records import Event

    def with_events(last, version):
        events = tuple(Event(seq, seq, 0.0, "info", f"event number {seq}") for seq in range(1, last + 1))
        return replace(d.client.snapshot, events=events, version=version)

    async with dashboard(tmp_path) as d:
        d.client.snapshot = with_events(60, 2)
        await d.pilot.press("5")
        log = d.app.screen.query_one(EventLog)
        await until(d.pilot, lambda: log.last_seq == 60 and log.is_vertical_scroll_end and log.scroll_y > 0)
        await d.pilot.press("home")  # straight after the tab key, no Tab to reach the log first
        await until(d.pilot, lambda: log.scroll_y == 0)
        d.client.snapshot = with_events(80, 3)  # the engine keeps sending
        await until(d.pilot, lambda: log.last_seq == 80)
        await settle(d.pilot)
        assert log.scroll_y == 0, "new events pulled the view away from what the user reads"
        await d.pilot.press("end")
        d.client.snapshot = with_events(90, 4)
        await until(d.pilot, lambda: log.last_seq == 90)
        await settle(d.pilot)
        assert log.is_vertical_scroll_end


TABS = {"1": "training", "3": "spectrum", "4": "robustness"}


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
@pytest.mark.parametrize("tab", ["1", "3", "4"])
def test_dashboard_layout(snap_compare, tmp_path, size, tab):
    async def show_tab(pilot):
        app = pilot.app
        await until(pilot, lambda: dashboard_ready(app) and "step 2000/7040" in status_text(app))
        await settle(pilot)
        await pilot.press(tab)
        await until(pilot, lambda: active_tab(app) == TABS[tab])
        await settle(pilot)

    assert snap_compare(fake_app(tmp_path, attach=True)[0], run_before=show_tab, terminal_size=size)


# -- end to end: a real engine process on synthetic data ----------------------------------------
FAST = [
    "device=cpu",
    "dataset=synthetic",
    "epochs=400",
    "snapshot_interval=0.05",
    "attack_every=0",
    "checkpoint_every=1",
    "rank_fraction=0.5",
]
EARLY_EVENT = "[info] started quickstart"  # after the time stamp "HH:MM:SS "


@pytest.mark.slow
async def test_end_to_end_start_steer_detach_and_resume_from_the_picker(tmp_path, engine_processes):
    app = RlrApp(None, FAST, tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, PickerScreen)
        table = app.screen.query_one("#presets")
        assert table.get_row_at(table.cursor_row)[0] == "quickstart"
        await pilot.press("enter")
        await until(pilot, lambda: dashboard_ready(app), timeout=120)
        engine_processes.append(app.run_dir)
        await until(
            pilot,
            lambda: (app.client.latest() or scripted_snapshot()).step > 5 and app.client.latest().state == "running",
            timeout=60,
        )
        await pilot.press("t")
        await type_value(pilot, "0.5")
        await until(pilot, lambda: app.client.latest().tau == 0.5 and "τ 0.5" in status_text(app))
        await until(pilot, lambda: any("τ: 0.1 → 0.5" in n for n in notifications(app)))
        await pilot.press("q", "d")
    run_dir = app.run_dir
    assert app.detached
    from rlr_engine.control.run_dirs import run_info

    assert run_info(run_dir).state == "running"  # training went on without the dashboard

    app = RlrApp(None, [], tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        runs = app.screen.query_one("#runs")
        await until(pilot, lambda: runs.row_count == 1)  # listed off the UI thread
        assert runs.get_row_at(0)[1] == "running"
        await pilot.press("tab", "enter")  # a running run: attach
        await until(pilot, lambda: dashboard_ready(app), timeout=120)
        await until(pilot, lambda: app.client.latest() is not None and app.client.latest().tau == 0.5)
        await until(pilot, lambda: "CondLR τ=0.5" in status_text(app))  # the current τ, not the preset's
        await pilot.press("5")  # the events from before this dashboard attached
        log = app.screen.query_one(EventLog)
        await until(pilot, lambda: any(line.text.startswith(EARLY_EVENT, 9) for line in log.lines))
        await pilot.press("q", "s")
        await until(pilot, lambda: not app.is_running, timeout=60)
    assert run_info(run_dir).state == "stopped"


async def test_at_80_columns_the_footer_shows_quit_help_tau_truncate_pause_and_attack(tmp_path):
    async with dashboard(tmp_path) as d:
        keys = ("t τ", "r Truncate", "space Pause", "a Attack", "q Quit", "? Help")
        await until(d.pilot, lambda: "? Help" in bottom_line(d.app))
        assert all(key in bottom_line(d.app) for key in keys), bottom_line(d.app)


async def test_a_picks_the_attack_from_the_registry_and_the_engine_gets_it(tmp_path):
    from rlr_engine.control.records import AttackNow
    from rlr_tui.screens.attack_dialog import AttackDialog

    async with dashboard(tmp_path, size=(100, 30)) as d:
        await d.pilot.press("a")
        await until(d.pilot, lambda: isinstance(d.app.screen, AttackDialog))
        await d.pilot.press("down", "enter")  # from the run's own (fgsm) to the next one
        await until(d.pilot, lambda: d.client.commands)
        assert d.client.commands == [AttackNow(attack="pgd-linf")]


@pytest.mark.slow
async def test_beta_and_window_keys_steer_a_rank_adaptive_run_and_are_absent_otherwise(tmp_path):
    from rlr_engine.control.records import Note, SetAdaptation

    adaptive = FakeClient(replace(scripted_snapshot(), method="robust-dlrt β=0.01", beta=0.01, adapt_every=10))
    async with dashboard(tmp_path, adaptive, size=(100, 30)) as d:
        await d.pilot.press("b")
        await type_value(d.pilot, "0.05")
        await d.pilot.press("k")
        await type_value(d.pilot, "oops")  # rejected in the dialog: nothing is sent
        assert isinstance(d.app.screen, ValueDialog)
        await type_value(d.pilot, "8")
        sent = [c for c in d.client.commands if not isinstance(c, Note)]
        assert sent == [SetAdaptation(beta=0.05), SetAdaptation(adapt_every=8)]
        assert [c.level for c in d.client.commands if isinstance(c, Note)] == ["rejected"]  # the 'oops'

    async with dashboard(tmp_path / "fixed-rank", size=(100, 30)) as d:
        await d.pilot.press("b", "k")
        await settle(d.pilot)
        assert d.client.commands == [] and isinstance(d.app.screen, DashboardScreen)


async def test_a_value_the_dialog_refuses_and_a_screenshot_go_into_the_runs_events(tmp_path):
    from rlr_engine.control.records import Note

    (tmp_path / "fake-run").mkdir()
    async with dashboard(tmp_path, size=(100, 30)) as d:
        await d.pilot.press("t")
        await type_value(d.pilot, "-1")
        assert isinstance(d.app.screen, ValueDialog)  # still open: nothing was applied
        await d.pilot.press("escape")
        await d.pilot.press("s")
        await until(d.pilot, lambda: len(d.client.commands) == 2)
        rejected, shot = d.client.commands
        assert (
            rejected == Note("rejected", rejected.message) and "'-1'" in rejected.message and "tau" in rejected.message
        )
        assert shot.level == "info" and "screenshot saved" in shot.message
        assert not any(isinstance(c, SetTau) for c in d.client.commands)


@pytest.mark.parametrize("key, field", [("t", "TAU"), ("r", "THETA"), ("l", "LR")])
async def test_at_80_columns_a_value_dialog_shows_its_whole_prompt_with_the_validators_range(tmp_path, key, field):
    from textual.geometry import Region

    from rlr_engine.core import validation

    async with dashboard(tmp_path) as d:
        await d.pilot.press(key)
        await until(d.pilot, lambda: isinstance(d.app.screen, ValueDialog))
        await settle(d.pilot)
        dialog = d.app.screen
        label, box = dialog.query_one("#dialog-prompt"), dialog.query_one("#dialog")
        assert label.region.right <= box.content_region.right, "the prompt runs past the dialog's edge"
        lines = label.render_lines(Region(0, 0, label.size.width, label.size.height))
        shown = " ".join(strip.text.strip() for strip in lines)
        assert " ".join(shown.split()) == dialog.prompt
        assert getattr(validation, field).allowed().lower() in dialog.prompt.lower()  # the range it checks


async def test_the_picker_names_a_runs_current_tau_not_its_presets(tmp_path):
    import json

    from rlr_engine.core.presets import dump_toml, load_preset

    run_dir = tmp_path / "runs" / "20260101-000000-quickstart"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dump_toml(load_preset("quickstart")))  # τ = 0.1
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"type": "train", "step": 40, "tau": 5.0}) + "\n")
    app = RlrApp(None, [], tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        runs = app.screen.query_one("#runs")
        await until(pilot, lambda: runs.row_count == 1)
        assert runs.get_row_at(0)[-1] == "CondLR τ=5"


@pytest.mark.parametrize("key, field", [("t", "tau"), ("r", "theta"), ("l", "lr"), ("b", "beta"), ("k", "adapt_every")])
async def test_every_value_dialog_refuses_a_huge_number_nan_inf_negative_empty_and_text_and_sends_nothing(
    tmp_path, key, field
):
    from rlr_engine.control.records import Note
    from rlr_engine.core import validation

    allowed = (
        validation.ADAPT_EVERY.allowed("an integer")
        if field == "adapt_every"
        else getattr(validation, field.upper()).allowed()
    )
    adaptive = FakeClient(replace(scripted_snapshot(), method="robust-dlrt β=0.01", beta=0.01, adapt_every=10))
    typed = ["1" + "0" * 400, "9" * 5000, "1e400", "nan", "inf", "-1", "", "fast"]
    if field == "tau":
        typed.remove("inf")  # τ = ∞ switches the conditioning off: allowed
    async with dashboard(tmp_path, adaptive, size=(100, 30)) as d:
        await d.pilot.press(key)
        await until(d.pilot, lambda: isinstance(d.app.screen, ValueDialog))
        dialog = d.app.screen
        for text in typed:
            dialog.query_one("Input").value = text  # pasted: typing 5000 keys is slow
            await d.pilot.press("enter")
            await settle(d.pilot)
            assert d.app.screen is dialog, f"{text[:20]!r} closed the dialog"
            error = str(dialog.query_one("#error").render())
            assert error.startswith(f"{field} must be {allowed}, got "), (text[:20], error)
            assert len(error) < 200, "a long value is cut in the message"
        await d.pilot.press("escape")
        await settle(d.pilot)
        assert not [c for c in d.client.commands if not isinstance(c, Note)], "a refused value was sent"
        notes = [c for c in d.client.commands if isinstance(c, Note)]
        assert len(notes) == len(typed) and all(n.level == "rejected" and field in n.message for n in notes)


async def test_space_toggles_from_the_last_pause_or_resume_sent_until_the_engine_answers(tmp_path):
    # The snapshot still says paused when the second press comes: it toggles from the resume sent.
    client = FakeClient(replace(scripted_snapshot(), state="paused"))
    async with dashboard(tmp_path, client) as d:
        await d.pilot.press("space", "space")
        assert d.client.commands == [Resume(), Pause()]
        # both answered; the engine's snapshot shows paused again
        await until(d.pilot, lambda: d.app.screen.pending is None)
        # A rejected resume leaves the run paused: space resumes again, it does not pause.
        d.client.reply = lambda c: ("rejected", "cannot resume: busy")
        await d.pilot.press("space")
        await until(d.pilot, lambda: any("busy" in n for n in notifications(d.app)))
        await d.pilot.press("space")
        assert d.client.commands == [Resume(), Pause(), Resume(), Resume()]


@pytest.mark.slow
async def test_after_stop_is_asked_no_command_is_sent_no_dialog_opens_and_q_does_not_crash(tmp_path):
    async with dashboard(tmp_path) as d:
        await d.pilot.press("q", "s")
        assert d.client.commands == [Stop()]
        for key in ("t", "r", "a", "space", "l", "c", "q"):
            await d.pilot.press(key)
            await settle(d.pilot)
            assert isinstance(d.app.screen, DashboardScreen), key
        assert d.client.commands == [Stop()] and d.app.is_running
        assert any("stopping" in n for n in notifications(d.app))
        footer = {b.binding.description for b in d.app.active_bindings.values() if b.enabled}
        assert not footer & {"τ", "Truncate", "Pause", "Resume", "Attack"}, footer
        d.client.snapshot = replace(d.client.snapshot, state="stopped", version=99)
        await until(d.pilot, lambda: not d.app.is_running)


async def test_q_with_only_the_default_screen_left_exits_instead_of_popping_it(tmp_path):
    async with dashboard(tmp_path) as d:
        d.app.pop_screen()  # the dashboard gone (closing down), the client still set
        await until(d.pilot, lambda: len(d.app.screen_stack) == 1)
        await d.pilot.press("q")
        await until(d.pilot, lambda: not d.app.is_running)


@pytest.mark.parametrize("ended", ["dead", "stopped"])
async def test_on_a_dead_or_stopped_run_the_steering_keys_are_disabled_and_say_why(tmp_path, ended):
    client = FakeClient(replace(scripted_snapshot(), last_checkpoint_step=1600))
    async with dashboard(tmp_path, client) as d:
        if ended == "dead":
            d.client.die()
        else:
            d.client.snapshot = replace(d.client.snapshot, state="stopped", version=2)
        await until(d.pilot, lambda: ended.upper() in status_text(d.app))
        bindings = {b.binding.description: b for b in d.app.active_bindings.values()}
        for name in ("τ", "Truncate", "Pause", "Attack"):
            assert not bindings[name].enabled, name
        assert bindings["Resume run"].enabled
        for key in ("t", "r", "a", "space", "l", "c"):
            await d.pilot.press(key)
            await settle(d.pilot)
            assert isinstance(d.app.screen, DashboardScreen), key
        assert d.client.commands == []
        assert any(f"the run is {ended}; R resumes" in n for n in notifications(d.app))
        assert not any("Broken pipe" in n or "engine is gone" in n for n in notifications(d.app))


@pytest.mark.slow
async def test_a_dashboard_showing_dead_reattaches_when_an_engine_lives_in_the_run_again(tmp_path):
    import fcntl
    import json
    import os

    run_dir = tmp_path / "fake-run"
    run_dir.mkdir()
    async with dashboard(tmp_path, size=(100, 30)) as d:
        d.client.die()
        await until(d.pilot, lambda: "DEAD" in status_text(d.app))
        # Another dashboard resumed the run: a new engine holds the run's lock.
        d.launcher.client = FakeClient(replace(scripted_snapshot(), step=2100, version=5))
        d.launcher.client.pid = 4343
        (run_dir / "engine.json").write_text(json.dumps({"pid": 4343}))
        fd = os.open(run_dir / "engine.json", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            await until(d.pilot, lambda: "RUNNING" in status_text(d.app))
        finally:
            os.close(fd)
        assert d.app.client is d.launcher.client and "step 2100/" in status_text(d.app)
        assert d.launcher.calls.count(("attach", run_dir)) == 2


def test_detaching_from_a_paused_run_says_it_stays_paused(tmp_path):
    from rlr_tui.app import farewell

    paused = replace(scripted_snapshot(), state="paused", step=720)
    ((line, error),) = farewell(paused, False, tmp_path / "fake-run")
    assert "detached at step 720; the run stays paused" in line and "training continues" not in line and not error
    ((line, _),) = farewell(replace(paused, state="running"), False, tmp_path / "fake-run")
    assert "detached at step 720; training continues" in line


@pytest.mark.slow
async def test_the_picker_lists_the_runs_again_and_offers_a_finished_run_to_extend_not_resume(tmp_path):
    import json

    from rlr_engine.core.presets import dump_toml, load_preset

    run_dir = tmp_path / "runs" / "20260101-000000-quickstart"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dump_toml(load_preset("quickstart")))
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "summary.json").write_text(json.dumps({"state": "stopped", "steps": 407, "total_steps": 1020}))
    client = FakeClient()
    app = RlrApp(None, [], tmp_path / "runs", launcher=FakeLauncher(client, run_dir))
    async with app.run_test(size=(100, 30)) as pilot:
        runs = app.screen.query_one("#runs")
        await until(pilot, lambda: runs.row_count == 1)
        assert runs.get_row_at(0)[1:3] == ["stopped (resume)", "407/1020"]
        # Resumed elsewhere and run to its end while the picker shows.
        epochs = load_preset("quickstart").epochs
        summary = {"state": "finished", "steps": 1020, "total_steps": 1020, "epochs": epochs}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        await until(pilot, lambda: runs.row_count == 1 and runs.get_row_at(0)[1] == "finished (extend)")
        app.resume_run(run_dir)  # a resume that would train nothing more is refused, naming the way on
        await until(pilot, lambda: any(f"finished after {epochs} epochs" in n for n in notifications(app)))
        assert app.launcher.calls == [] and isinstance(app.screen, PickerScreen)
        runs.focus()
        await pilot.press("enter")  # Enter on a finished run asks for the epochs to add
        await until(pilot, lambda: isinstance(app.screen, ValueDialog))
        await type_value(pilot, "5")
        await until(pilot, lambda: app.launcher.calls[:1] == [("resume", run_dir)])
        assert app.launcher.resume_overrides == [[f"epochs={epochs + 5}"]]


async def test_at_80x24_the_picker_opens_with_the_preselected_quickstart_row_in_view(tmp_path):
    app = RlrApp(None, [], tmp_path / "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#presets")
        await until(pilot, lambda: table.row_count and table.get_row_at(table.cursor_row)[0] == "quickstart")
        await settle(pilot)
        top, bottom = table.content_region.y, table.content_region.bottom
        shown = screen_lines(app)[top:bottom]
        assert any(line.startswith(" quickstart ") for line in shown), "\n".join(shown)


async def test_at_80_columns_a_long_preset_name_keeps_the_progress_line_in_the_status_bar(tmp_path):
    client = FakeClient(
        replace(scripted_snapshot(), preset="fmnist-lenet5-condlr-adaptive", method="robust-dlrt β=0.01 τ=0.1")
    )
    async with dashboard(tmp_path, client) as d:
        await until(d.pilot, lambda: "step 2000/7040" in status_text(d.app))
        await settle(d.pilot)
        bar = d.app.screen.query_one(StatusBar)
        top = bar.region.y
        first, second = screen_lines(d.app)[top : top + 2]
        assert "fmnist-lenet5-condlr-adaptive" in first and first.rstrip().endswith("…"), first
        assert second.startswith(" epoch 5/20  step 2000/7040") and "τ 0.1" in second, second


async def test_u_sends_undo_and_a_refusal_shows_the_engines_reason(tmp_path):
    from rlr_engine.control.records import Undo

    reason = "nothing to undo: no truncation, τ, lr, θ or β change since the run resumed at step 400"
    client = FakeClient(reply=lambda c: ("rejected", reason) if isinstance(c, Undo) else ("applied", "ok"))
    async with dashboard(tmp_path, client) as d:
        await d.pilot.press("u")
        await until(d.pilot, lambda: any(reason in n for n in notifications(d.app)))
        assert d.client.commands == [Undo()]
        assert any(n.startswith("undo rejected") for n in notifications(d.app))


def finished_run(tmp_path, epochs=20):
    """A finished run directory (config, checkpoint, summary) and a client that shows it finished."""
    import json

    from rlr_engine.core.presets import dump_toml, load_preset

    run_dir = tmp_path / "fake-run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(dump_toml(load_preset("quickstart", [f"epochs={epochs}"])))
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "summary.json").write_text(json.dumps({"state": "finished", "epochs": epochs, "steps": 700}))
    return run_dir, FakeClient(replace(scripted_snapshot(), state="finished", epoch=epochs, epochs=epochs))


async def test_e_on_a_finished_run_asks_for_epochs_to_add_and_resumes_it_with_that_many_more(tmp_path):
    run_dir, client = finished_run(tmp_path)
    async with dashboard(tmp_path, client) as d:
        await until(d.pilot, lambda: "e Extend" in bottom_line(d.app))
        await d.pilot.press("e")
        await until(d.pilot, lambda: isinstance(d.app.screen, ValueDialog))
        await type_value(d.pilot, "0")  # refused in the dialog: nothing is resumed
        assert isinstance(d.app.screen, ValueDialog) and ("resume", run_dir) not in d.launcher.calls
        await type_value(d.pilot, "15")
        await until(d.pilot, lambda: ("resume", run_dir) in d.launcher.calls)
        assert d.launcher.resume_overrides == [["epochs=35"]]


async def test_e_is_not_offered_while_the_run_trains(tmp_path):
    async with dashboard(tmp_path) as d:
        await until(d.pilot, lambda: "? Help" in bottom_line(d.app))
        assert "Extend" not in bottom_line(d.app)
        await d.pilot.press("e")
        await d.pilot.pause()
        assert isinstance(d.app.screen, DashboardScreen) and not any(c[0] == "resume" for c in d.launcher.calls)


async def test_an_engine_message_with_brackets_is_shown_whole_in_its_toast(tmp_path):
    message = "autoattack needs its extra: pip install 'rlr[attacks]'"
    client = FakeClient(reply=lambda c: ("rejected", message))
    async with dashboard(tmp_path, client, size=(120, 30), toasts=True) as d:
        await d.pilot.press("c")  # any command: the engine's answer is the message
        await until(d.pilot, lambda: len(d.app.screen.query("Toast")) > 0)
        shown = " ".join(str(toast.render()).replace("\n", " ") for toast in d.app.screen.query("Toast"))
        assert "pip install 'rlr[attacks]'" in shown, shown


async def test_at_80_columns_a_dead_engines_header_ends_with_what_to_do_not_an_ellipsis(tmp_path):
    # five-digit steps, as a long run has
    client = FakeClient(replace(scripted_snapshot(), step=18470, total_steps=40800, last_checkpoint_step=16000))
    async with dashboard(tmp_path, client, size=(80, 24)) as d:
        d.client.die()
        await until(d.pilot, lambda: "DEAD" in status_text(d.app))
        top = d.app.screen.query_one(StatusBar).region.y
        second = screen_lines(d.app)[top + 1].rstrip()
        assert second.endswith("last checkpoint: step 16000; R resumes"), second


async def test_the_engine_died_toast_goes_away_once_r_has_the_run_running_again(tmp_path):
    from rlr_engine.core.presets import dump_toml, load_preset

    client = FakeClient(replace(scripted_snapshot(), last_checkpoint_step=1600))
    (tmp_path / "fake-run").mkdir()
    async with dashboard(tmp_path, client) as d:
        d.client.die()
        await until(d.pilot, lambda: any("the engine died" in n for n in notifications(d.app)))
        (tmp_path / "fake-run" / "config.toml").write_text(dump_toml(load_preset("quickstart")))
        (tmp_path / "fake-run" / "checkpoint.pt").write_bytes(b"x")
        d.launcher.client = FakeClient(replace(scripted_snapshot(), step=1700, version=9))
        await d.pilot.press("R")
        await until(d.pilot, lambda: "RUNNING" in status_text(d.app) and "step 1700/" in status_text(d.app))
        await until(d.pilot, lambda: not any("the engine died" in n for n in notifications(d.app)))


async def test_a_dialog_opened_while_the_run_resumes_closes_and_the_new_dashboard_replaces_the_old(tmp_path):
    import threading

    from rlr_engine.core.presets import dump_toml, load_preset
    from rlr_tui.screens.help import HelpScreen

    release = threading.Event()

    class SlowLauncher(FakeLauncher):
        def resume(self, run_dir, overrides):
            assert release.wait(30), "the test never let the engine start"
            return super().resume(run_dir, overrides)

    client = FakeClient(replace(scripted_snapshot(), last_checkpoint_step=1600))
    (tmp_path / "fake-run").mkdir()
    app = RlrApp("quickstart", [], tmp_path / "runs", launcher=SlowLauncher(client, tmp_path / "fake-run"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: dashboard_ready(app))
        old = app.screen
        client.die()
        await until(pilot, lambda: "DEAD" in status_text(app))
        (tmp_path / "fake-run" / "config.toml").write_text(dump_toml(load_preset("quickstart")))
        (tmp_path / "fake-run" / "checkpoint.pt").write_bytes(b"x")
        app.launcher.client = FakeClient(replace(scripted_snapshot(), step=1700, version=9))
        await pilot.press("R")
        await until(pilot, lambda: app.launching)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        release.set()
        await until(pilot, lambda: dashboard_ready(app) and "step 1700/" in status_text(app))
        dashboards = [screen for screen in app.screen_stack if isinstance(screen, DashboardScreen)]
        assert dashboards == [app.screen] and old not in app.screen_stack
        assert not any(isinstance(screen, HelpScreen) for screen in app.screen_stack)


async def test_after_enter_in_the_picker_starting_shows_until_the_dashboard_does(tmp_path):
    import threading

    from rlr_tui.widgets.starting_notice import StartingNotice

    loaded = threading.Event()

    class SlowLauncher(FakeLauncher):
        def start(self, preset, overrides, runs_root):
            assert loaded.wait(30), "the test never let the data set load"
            return super().start(preset, overrides, runs_root)

    app = RlrApp(None, [], tmp_path / "runs", launcher=SlowLauncher(FakeClient(), tmp_path / "fake-run"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.focused is not None and app.focused.id == "presets")
        await pilot.press("enter")  # quickstart is preselected
        notice = app.screen.query_one(StartingNotice)
        await until(pilot, lambda: notice.display and any("starting quickstart" in line for line in screen_lines(app)))
        loaded.set()
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and "RUNNING" in status_text(app))
        assert not app.screen.query_one(StartingNotice).display and app.starting == ""


async def test_the_picker_lists_the_runs_off_the_ui_thread_the_first_time_too(tmp_path, monkeypatch):
    import threading

    import rlr_tui.screens.picker as picker

    threads = []

    def list_runs(root):
        threads.append(threading.current_thread())
        return []

    monkeypatch.setattr(picker, "list_runs", list_runs)
    app = RlrApp(None, [], tmp_path / "runs", launcher=FakeLauncher(FakeClient(), tmp_path / "fake-run"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: bool(threads))
        await app.workers.wait_for_complete()
        assert threads[0] is not threading.main_thread()


def test_rlr_tui_resume_of_a_finished_run_without_more_epochs_is_one_line_and_exit_2(tmp_path, capsys):
    from rlr_tui.app import main

    run_dir, _ = finished_run(tmp_path, epochs=20)
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished after 20 epochs" in err and "--set epochs=N with N > 20" in err, err
