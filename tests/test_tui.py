"""Pilot tests of the dashboard against a scripted client (fast, deterministic: layout snapshots,
keys, acknowledgements, a dead engine), and one end to end against a real engine process."""

import time
from dataclasses import replace

import pytest

from fake_client import FakeClient, FakeLauncher, scripted_snapshot
from rlr_engine.records import Pause, Resume, SetTau, Stop, Truncate
from rlr_tui.app import RlrApp
from rlr_tui.screens.dashboard import DashboardScreen
from rlr_tui.screens.help import HelpScreen
from rlr_tui.screens.picker import PickerScreen
from rlr_tui.screens.quit import QuitScreen
from rlr_tui.screens.value_dialog import ValueDialog
from rlr_tui.widgets.status_bar import StatusBar


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


def notifications(app) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


def fake_app(tmp_path, client=None, attach=False):
    client = client or FakeClient()
    launcher = FakeLauncher(client, tmp_path / "fake-run")
    if attach:
        return RlrApp(None, [], tmp_path / "runs", attach=tmp_path / "fake-run", launcher=launcher), client, launcher
    return RlrApp("quickstart", [], tmp_path / "runs", launcher=launcher), client, launcher


async def test_keys_send_commands_to_the_engine(tmp_path):
    app, client, launcher = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("space")
        await pilot.press("t")
        await type_value(pilot, "0.25")
        await pilot.press("r")
        await type_value(pilot, "0.3")
        assert client.commands == [Pause(), SetTau(0.25), Truncate(theta=0.3)]
        assert launcher.calls[0] == ("start", "quickstart")


async def test_a_rejected_command_shows_the_engines_reason_not_a_success(tmp_path):
    client = FakeClient(reply=lambda c: ("rejected", "tau must be a number in [0, inf], got 7 (engine says no)"))
    app, client, _ = fake_app(tmp_path, client)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("t")
        await type_value(pilot, "7")
        await until(pilot, lambda: any("engine says no" in n for n in notifications(app)))
        shown = [n for n in notifications(app) if "set_tau" in n]
        assert shown and all("rejected" in n for n in shown)


async def test_an_acknowledgement_from_another_dashboard_is_shown(tmp_path):
    app, client, _ = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        client.ack_from_other("set_tau", "τ: 0.1 → 0.7")
        await until(pilot, lambda: any("τ: 0.1 → 0.7 (from another client)" in n for n in notifications(app)))


async def test_while_paused_the_footer_offers_resume_and_the_header_shows_no_rate(tmp_path):
    client = FakeClient(replace(scripted_snapshot(), state="paused", samples_per_s=0.0, eta_s=None))
    app, client, _ = fake_app(tmp_path, client)
    async with app.run_test(size=(100, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.pause(0.3)
        footer = {b.binding.description for b in app.active_bindings.values() if b.enabled}
        assert "Resume" in footer and "Pause" not in footer
        assert "PAUSED" in status_text(app) and "0/s" in status_text(app) and "ETA –" in status_text(app)
        await pilot.press("space")
        assert client.commands == [Resume()]


async def test_quit_offers_stop_detach_and_cancel(tmp_path):
    app, client, _ = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen) and client.commands == []
        await pilot.press("q", "s")
        assert client.commands == [Stop()]
        assert app.is_running  # it waits for the engine to say the run stopped
        client.snapshot = replace(client.snapshot, state="stopped", version=99)
        await until(pilot, lambda: not app.is_running)
    app, client, _ = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("q", "d")
        await until(pilot, lambda: not app.is_running)
    assert app.detached and client.commands == []


async def test_a_dead_engine_is_reported_with_the_last_checkpoint_and_r_resumes(tmp_path):
    client = FakeClient(replace(scripted_snapshot(), last_checkpoint_step=1600))
    app, client, launcher = fake_app(tmp_path, client)
    (tmp_path / "fake-run").mkdir()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        client.die()
        await until(pilot, lambda: "DEAD" in status_text(app), timeout=2.0)
        assert any("step 1600" in n and "R resumes" in n for n in notifications(app))
        from rlr_engine.presets import dump_toml, load_preset
        (tmp_path / "fake-run" / "config.toml").write_text(dump_toml(load_preset("quickstart")))
        (tmp_path / "fake-run" / "checkpoint.pt").write_bytes(b"x")
        await pilot.press("R")
        await until(pilot, lambda: ("resume", tmp_path / "fake-run") in launcher.calls)


async def test_screenshot_help_and_layer_keys(tmp_path):
    app, client, _ = fake_app(tmp_path)
    (tmp_path / "fake-run").mkdir()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("s")
        await until(pilot, lambda: list((tmp_path / "fake-run").glob("dashboard-*.svg")))
        await pilot.press("3")
        await pilot.pause(0.3)
        await pilot.press("right_square_bracket")
        assert app.screen.selected_layer == 1
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert app.screen.selected_layer == len(client.snapshot.layers) - 1
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
@pytest.mark.parametrize("tab", ["1", "3", "4"])
def test_dashboard_layout(snap_compare, tmp_path, size, tab):
    async def show_tab(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen))
        await pilot.pause(0.3)
        await pilot.press(tab)
        await pilot.pause(0.7)
    assert snap_compare(fake_app(tmp_path, attach=True)[0], run_before=show_tab, terminal_size=size)


# -- end to end: a real engine process on synthetic data ----------------------------------------
FAST = ["dataset=synthetic", "epochs=400", "snapshot_interval=0.05", "attack_every=0", "checkpoint_every=1",
        "rank_fraction=0.5"]


async def test_end_to_end_start_steer_detach_and_resume_from_the_picker(tmp_path, engine_processes):
    app = RlrApp(None, FAST, tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, PickerScreen)
        table = app.screen.query_one("#presets")
        assert table.get_row_at(table.cursor_row)[0] == "quickstart"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=120)
        engine_processes.append(app.run_dir)
        await until(pilot, lambda: (app.client.latest() or scripted_snapshot()).step > 5
                    and app.client.latest().state == "running", timeout=60)
        await pilot.press("t")
        await type_value(pilot, "0.5")
        await until(pilot, lambda: app.client.latest().tau == 0.5 and "τ 0.5" in status_text(app))
        await until(pilot, lambda: any("τ: 0.1 → 0.5" in n for n in notifications(app)))
        await pilot.press("q", "d")
    run_dir = app.run_dir
    assert app.detached
    from rlr_engine.runs import run_info
    assert run_info(run_dir).state == "running"  # training went on without the dashboard

    app = RlrApp(None, [], tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        runs = app.screen.query_one("#runs")
        assert runs.row_count == 1 and runs.get_row_at(0)[1] == "running"
        await pilot.press("tab", "enter")  # a running run: attach
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=30)
        await until(pilot, lambda: app.client.latest() is not None and app.client.latest().tau == 0.5)
        assert "CondLR τ=0.5" in status_text(app)  # the current τ, not the preset's
        await pilot.press("q", "s")
        await until(pilot, lambda: not app.is_running, timeout=60)
    assert run_info(run_dir).state == "stopped"


async def test_at_80_columns_the_footer_shows_quit_help_tau_truncate_pause_and_attack(tmp_path):
    from textual.widgets import Footer
    from textual.widgets._footer import FooterKey

    app, client, _ = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.pause(0.3)
        footer = app.screen.query_one(Footer)
        visible = {key.description for key in footer.query(FooterKey)
                   if key.region.width and key.region.right <= footer.region.right}
        assert {"Quit", "Help", "τ", "Truncate", "Pause", "Attack"} <= visible, visible


async def test_a_picks_the_attack_from_the_registry_and_the_engine_gets_it(tmp_path):
    from rlr_engine.records import AttackNow
    from rlr_tui.screens.attack_dialog import AttackDialog

    app, client, _ = fake_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, AttackDialog))
        await pilot.press("down", "enter")  # from the run's own (fgsm) to the next one
        await until(pilot, lambda: client.commands)
        assert client.commands == [AttackNow(attack="pgd-linf")]


async def test_beta_and_window_keys_steer_a_rank_adaptive_run_and_are_absent_otherwise(tmp_path):
    from rlr_engine.records import Note, SetAdaptation

    adaptive = FakeClient(replace(scripted_snapshot(), method="robust-dlrt β=0.01", beta=0.01, adapt_every=10))
    app, client, _ = fake_app(tmp_path, adaptive)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("b")
        await type_value(pilot, "0.05")
        await pilot.press("k")
        await type_value(pilot, "oops")  # rejected in the dialog: nothing is sent
        assert isinstance(app.screen, ValueDialog)
        await type_value(pilot, "8")
        sent = [c for c in client.commands if not isinstance(c, Note)]
        assert sent == [SetAdaptation(beta=0.05), SetAdaptation(adapt_every=8)]
        assert [c.level for c in client.commands if isinstance(c, Note)] == ["rejected"]  # the 'oops'

    app, client, _ = fake_app(tmp_path / "fixed-rank")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("b", "k")
        await pilot.pause(0.2)
        assert client.commands == [] and isinstance(app.screen, DashboardScreen)


async def test_a_value_the_dialog_refuses_and_a_screenshot_go_into_the_runs_events(tmp_path):
    from rlr_engine.records import Note

    app, client, _ = fake_app(tmp_path)
    (tmp_path / "fake-run").mkdir()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("t")
        await type_value(pilot, "-1")
        assert isinstance(app.screen, ValueDialog)  # still open: nothing was applied
        await pilot.press("escape")
        await pilot.press("s")
        await until(pilot, lambda: len(client.commands) == 2)
        rejected, shot = client.commands
        assert rejected == Note("rejected", rejected.message) and "'-1'" in rejected.message and "tau" in rejected.message
        assert shot.level == "info" and "screenshot saved" in shot.message
        assert not any(isinstance(c, SetTau) for c in client.commands)
