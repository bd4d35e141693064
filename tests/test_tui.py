"""Pilot tests of the dashboard: the real engine on synthetic data, and a scripted fake engine
for deterministic layout snapshots."""

import asyncio
import time
from pathlib import Path

import pytest

from fake_engine import FakeEngine
from helpers import STARTED
from rlr_engine.checkpoint import load_checkpoint
from rlr_engine.records import Pause, SetTau, Truncate
from rlr_tui.app import RlrApp, launch_engine
from rlr_tui.screens.dashboard import DashboardScreen
from rlr_tui.screens.help import HelpScreen
from rlr_tui.screens.picker import PickerScreen
from rlr_tui.screens.value_dialog import ValueDialog
from rlr_tui.widgets.curves import CurvesPlot
from rlr_tui.widgets.rank_bars import RankBars
from rlr_tui.widgets.status_bar import StatusBar

FAST = ["dataset=synthetic", "epochs=200", "snapshot_interval=0.05", "attack_every=0", "checkpoint_every=0",
        "rank_fraction=0.5"]


def tracked_engine(config, run_dir, resume):
    engine = launch_engine(config, run_dir, resume)
    STARTED.append(engine)
    return engine


async def until(pilot, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached in time")


async def type_value(pilot, text):
    dialog = pilot.app.screen
    assert isinstance(dialog, ValueDialog)
    dialog.query_one("Input").value = ""
    await pilot.press(*text)
    await pilot.press("enter")
    await pilot.pause(0.1)


def status_text(app) -> str:
    return str(app.screen.query_one(StatusBar).render())


def make_app(tmp_path, preset="quickstart", extra=()):
    return RlrApp(preset, FAST + list(extra), tmp_path / "runs", engine_factory=tracked_engine)


def test_picking_quickstart_starts_training_and_feeds_plots_and_rank_bars(tmp_path):
    async def scenario():
        app = RlrApp(None, FAST, tmp_path / "runs", engine_factory=tracked_engine)
        async with app.run_test(size=(100, 30)) as pilot:
            assert isinstance(app.screen, PickerScreen)
            table = app.screen.query_one("#presets")
            assert table.get_row_at(table.cursor_row)[0] == "quickstart"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
            await until(pilot, lambda: app.engine.latest().step > 20)
            await until(pilot, lambda: app.screen.query_one("#loss-plot", CurvesPlot).points_drawn.get("train", 0) > 1)
            await pilot.press("2")
            await until(pilot, lambda: app.screen.query_one(RankBars).rows)
            rows = app.screen.query_one(RankBars).rows
            assert ("conv2", 32, 64) in rows
            assert "RUNNING" in status_text(app) and "quickstart" in status_text(app)
    asyncio.run(scenario())


def test_typing_a_new_tau_changes_the_engine_and_a_bad_one_changes_nothing(tmp_path):
    async def scenario():
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.engine.latest().step > 5)
            await pilot.press("t")
            await type_value(pilot, "-1")
            dialog = app.screen
            assert isinstance(dialog, ValueDialog)
            assert "tau must be a number in [0, inf]" in str(dialog.query_one("#error").render())
            await pilot.press("escape")
            await pilot.pause(0.3)
            assert app.engine.latest().tau == 0.1
            await pilot.press("t")
            await type_value(pilot, "0.5")
            assert isinstance(app.screen, DashboardScreen)
            await until(pilot, lambda: app.engine.latest().tau == 0.5)
            await until(pilot, lambda: "τ 0.5" in status_text(app))
            await pilot.press("t")
            await type_value(pilot, "inf")
            await until(pilot, lambda: app.engine.latest().tau == float("inf"))
    asyncio.run(scenario())


def test_truncate_lowers_the_displayed_ranks(tmp_path):
    async def scenario():
        app = make_app(tmp_path, extra=["rank_fraction=1.0"])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            await until(pilot, lambda: app.screen.query_one(RankBars).rows)
            before = dict((n, r) for n, r, _ in app.screen.query_one(RankBars).rows)
            await pilot.press("r")
            await type_value(pilot, "0.5")
            await until(pilot, lambda: dict((n, r) for n, r, _ in app.screen.query_one(RankBars).rows)["conv2"]
                        < before["conv2"])
            after = dict((n, r) for n, r, _ in app.screen.query_one(RankBars).rows)
            assert all(after[n] <= before[n] for n in before)
    asyncio.run(scenario())


def test_pause_stops_the_step_counter(tmp_path):
    async def scenario():
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.engine.latest().step > 5)
            await pilot.press("space")
            await until(pilot, lambda: app.engine.latest().state == "paused")
            await until(pilot, lambda: "PAUSED" in status_text(app))
            step = app.engine.latest().step
            await pilot.pause(0.6)
            assert app.engine.latest().step == step
            await pilot.press("space")
            await until(pilot, lambda: app.engine.latest().step > step)
    asyncio.run(scenario())


def test_quit_asks_then_stops_the_engine_and_writes_the_final_checkpoint(tmp_path):
    async def scenario():
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.engine.latest().step > 5)
            await pilot.press("q")
            await pilot.press("n")
            await pilot.pause(0.2)
            assert app.engine.latest().state == "running"
            await pilot.press("q")
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running or app.engine.latest().state == "stopped")
        snap = app.engine.latest()
        assert snap.state == "stopped"
        assert load_checkpoint(Path(snap.run_dir))["step"] == snap.step
    asyncio.run(scenario())


def test_screenshot_help_and_layer_keys(tmp_path):
    async def scenario():
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.engine.latest().layers)
            await pilot.press("s")
            await until(pilot, lambda: list(Path(app.engine.latest().run_dir).glob("dashboard-*.svg")))
            await pilot.press("3")
            await pilot.pause(0.3)
            await pilot.press("right_square_bracket")
            assert app.screen.selected_layer == 1
            await pilot.press("left_square_bracket", "left_square_bracket")
            assert app.screen.selected_layer == len(app.engine.latest().layers) - 1
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, DashboardScreen)
    asyncio.run(scenario())


def fake_app():
    engine = FakeEngine()
    app = RlrApp("quickstart", [], "/tmp/unused-runs", engine_factory=lambda *a: engine)
    app._open = lambda config, run_dir, resume: (setattr(app, "engine", engine),
                                                 app.push_screen(DashboardScreen(engine)))
    return app


def test_keys_send_commands_to_the_engine():
    async def scenario():
        app = fake_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            await pilot.press("space")
            await pilot.press("t")
            await type_value(pilot, "0.25")
            await pilot.press("r")
            await type_value(pilot, "0.3")
            assert app.engine.commands == [Pause(), SetTau(0.25), Truncate(theta=0.3)]
    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
@pytest.mark.parametrize("tab", ["1", "3", "4"])
def test_dashboard_layout(snap_compare, size, tab):
    async def show_tab(pilot):
        await pilot.pause(0.3)
        await pilot.press(tab)
        await pilot.pause(0.7)
    assert snap_compare(fake_app(), run_before=show_tab, terminal_size=size)


def test_a_stopped_run_is_listed_in_the_picker_and_resumes_where_it_stopped(tmp_path):
    from helpers import start_engine, wait_for

    engine = start_engine(tmp_path, epochs=200)
    wait_for(engine, lambda s: s.step > 5)
    engine.stop(30)
    stopped_at = engine.latest().step

    async def scenario():
        app = RlrApp(None, [], tmp_path / "runs", engine_factory=tracked_engine)
        async with app.run_test(size=(100, 30)) as pilot:
            runs = app.screen.query_one("#runs")
            assert runs.row_count == 1 and runs.get_row_at(0)[2] == "resumable"
            await pilot.press("tab")
            assert app.focused is runs
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
            await until(pilot, lambda: app.engine.latest().step > stopped_at)
            assert any("resumed test" in e.message and f"step {stopped_at}" in e.message
                       for e in app.engine.latest().events)
    asyncio.run(scenario())
