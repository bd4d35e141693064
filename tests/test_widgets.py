"""Dashboard widgets on their own, in a bare app: scroll-back of the event log, plots that stay
readable without colour, dialogs that show their whole prompt at 80×24."""

import re
from pathlib import Path

import pytest
from fake_client import scripted_snapshot
from pilot_waits import screen_lines, settle, until
from textual.app import App
from textual.geometry import Region

import rlr_tui
from rlr_engine.control.records import Event
from rlr_engine.core.validation import check_theta
from rlr_tui.screens.value_dialog import ValueDialog
from rlr_tui.widgets.curves import CurvesPlot
from rlr_tui.widgets.event_log import EventLog
from rlr_tui.widgets.markers import MONOCHROME_MARKERS
from rlr_tui.widgets.rank_bars import RankBars
from rlr_tui.widgets.robustness import AccuracyHistory, AccuracyVsEps


def events(first, last):
    return tuple(Event(seq, seq * 10, 0.0, "info", f"event number {seq}") for seq in range(first, last + 1))


class LogApp(App):
    def compose(self):
        yield EventLog(id="log")


@pytest.mark.slow
async def test_event_log_stays_where_the_user_scrolled_and_follows_again_at_the_end():
    app = LogApp()
    async with app.run_test(size=(80, 12)) as pilot:
        log = app.query_one(EventLog)
        log.focus()
        log.show(events(1, 60))
        await until(pilot, lambda: log.is_vertical_scroll_end and log.scroll_y > 0)
        await pilot.press("home")
        await until(pilot, lambda: log.scroll_y == 0)
        log.show(events(61, 80))  # a running engine keeps sending
        await until(pilot, lambda: log.last_seq == 80)
        await settle(pilot)
        assert log.scroll_y == 0, "new events must not pull the view away from what the user reads"
        await pilot.press("pageup")  # still scrollable by keyboard
        await pilot.press("end")
        await until(pilot, lambda: log.is_vertical_scroll_end)
        log.show(events(81, 90))
        await until(pilot, lambda: log.last_seq == 90)
        await settle(pilot)
        assert log.is_vertical_scroll_end and log.last_seq == 90


class PlotApp(App):
    def compose(self):
        yield CurvesPlot("accuracy", id="acc")


async def plot_text(monkeypatch, no_color: bool) -> str:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    app = PlotApp()
    async with app.run_test(size=(100, 30)) as pilot:
        plot = app.query_one(CurvesPlot)
        plot.show(scripted_snapshot())
        await settle(pilot)
        return plot.plt.build()


async def test_without_colour_train_val_and_test_curves_get_their_own_markers(monkeypatch):
    plain = await plot_text(monkeypatch, no_color=True)
    assert all(marker in plain for marker in ("•", "+", "x"))
    coloured = await plot_text(monkeypatch, no_color=False)
    assert not any(marker in coloured for marker in ("•", "+", "x")), "colour tells the series apart there"


async def test_the_truncation_dialog_shows_its_whole_prompt_at_80_columns():
    prompt = (
        "Relative tolerance θ in [0, 1): keep the smallest rank whose discarded σ have norm ≤ θ‖σ‖, "
        "then apply the τ projection."
    )

    class DialogApp(App):
        CSS_PATH = str(Path(rlr_tui.__file__).parent / "app.tcss")

    app = DialogApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(ValueDialog("Truncate now", prompt, "0.1", check_theta))
        label = app.screen.query_one("#dialog-prompt")
        await until(pilot, lambda: label.size.width > 0)
        await settle(pilot)
        dialog = app.screen.query_one("#dialog")
        assert label.region.right <= dialog.content_region.right, "the prompt runs past the dialog's edge"
        lines = label.render_lines(Region(0, 0, label.size.width, label.size.height))
        shown = " ".join(strip.text.strip() for strip in lines)
        assert " ".join(shown.split()) == prompt


class HistoryApp(App):
    def compose(self):
        yield AccuracyHistory(id="history")


async def test_without_colour_every_eps_line_over_the_run_gets_its_own_marker(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = HistoryApp()
    async with app.run_test(size=(100, 30)) as pilot:
        plot = app.query_one(AccuracyHistory)
        plot.show(scripted_snapshot())  # four attacks at ε = 0, 0.02, 0.04, 0.06
        await settle(pilot)
        drawn = re.sub(r"\x1b\[[0-9;]*m", "", plot.plt.build())
    legend = [f"{marker} ε={eps:g}" for marker, eps in zip(MONOCHROME_MARKERS, (0, 0.02, 0.04, 0.06))]
    assert all(entry in drawn for entry in legend), drawn


class EpsApp(App):
    def compose(self):
        yield AccuracyVsEps(id="eps")


async def test_the_accuracy_vs_eps_plot_has_a_title_that_fits_its_width():
    # At 80 columns the plot is 40 wide: the full title does not fit, a shorter one is shown.
    for width, title in [
        (40, "fgsm @ 1600  checks: no flags"),
        (100, "fgsm at step 1600: accuracy (%) vs ε  checks: no flags"),
    ]:
        app = EpsApp()
        async with app.run_test(size=(width, 20)) as pilot:
            plot = app.query_one(AccuracyVsEps)
            plot.show(scripted_snapshot())
            await settle(pilot)
            drawn = re.sub(r"\x1b\[[0-9;]*m", "", plot.plt.build())
        assert title in [line.strip() for line in drawn.splitlines()], drawn


async def test_accuracy_over_the_run_follows_one_attack_and_never_joins_another():
    from dataclasses import replace

    from rlr_engine.control.records import AttackResult
    from rlr_tui.widgets.robustness import scheduled_attack_history

    eps = (0.0, 0.02, 0.04)
    history = (
        AttackResult(170, 1, "fgsm", eps, (0.9, 0.7, 0.5)),
        AttackResult(213, 1, "pgd-linf", eps, (0.9, 0.4, 0.1)),  # started by hand
        AttackResult(340, 2, "fgsm", eps, (0.92, 0.72, 0.52)),
    )
    snap = replace(scripted_snapshot(), adversarial=history[-1], adversarial_history=history)
    assert [(r.step, r.attack) for r in scheduled_attack_history(snap)] == [(170, "fgsm"), (340, "fgsm")]
    snap = replace(snap, adversarial=history[1], adversarial_history=history[:2])  # a tie: the latest attack
    assert [r.attack for r in scheduled_attack_history(snap)] == ["pgd-linf"]
    app = HistoryApp()
    async with app.run_test(size=(100, 30)) as pilot:
        plot = app.query_one(AccuracyHistory)
        plot.show(replace(snap, adversarial=history[1], adversarial_history=history))
        await settle(pilot)
        drawn = re.sub(r"\x1b\[[0-9;]*m", "", plot.plt.build())
    assert "fgsm: accuracy (%) per ε over the run" in drawn, drawn


def drawn_text(plot) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", plot.plt.build())


async def test_the_robustness_tab_keeps_the_latest_result_of_each_attack_with_its_step():
    from dataclasses import replace

    from rlr_engine.control.records import AttackResult

    eps = (0.0, 0.02, 0.04)
    history = (
        AttackResult(1600, 4, "fgsm", eps, (0.9, 0.7, 0.5)),
        AttackResult(1603, 4, "pgd-linf", eps, (0.9, 0.4, 0.1)),  # asked for with a
        AttackResult(1609, 4, "fgsm", eps, (0.91, 0.71, 0.51)),  # the next scheduled one
    )
    snap = replace(scripted_snapshot(), adversarial=history[-1], adversarial_history=history)
    app = EpsApp()
    async with app.run_test(size=(120, 30)) as pilot:
        plot = app.query_one(AccuracyVsEps)
        plot.show(snap)
        await pilot.pause()
        drawn = drawn_text(plot)
    assert plot.shown == (("fgsm", 1609), ("pgd-linf", 1603))
    assert "fgsm @ 1609" in drawn and "pgd-linf @ 1603" in drawn, drawn


class RanksApp(App):
    def compose(self):
        yield RankBars(id="ranks")


async def test_at_200_columns_rank_bars_use_the_width_with_their_rank_next_to_them_and_a_legend():
    app = RanksApp()
    async with app.run_test(size=(200, 20)) as pilot:
        bars = app.query_one(RankBars)
        bars.show(scripted_snapshot())
        await pilot.pause()
        lines = [line.rstrip() for line in screen_lines(app)]
    assert bars.bar_width > 150
    fc2 = next(line for line in lines if line.lstrip().startswith("fc2"))
    assert "█ 10/10 (dense) 10×500" in fc2, fc2  # the label right after its (full) bar, then its shape
    conv1 = next(line for line in lines if line.lstrip().startswith("conv1"))
    assert "░ 4/20" in conv1, conv1
    legend = ("kept/full rank of a low-rank layer", "dense layer, not compressed")
    assert any(all(words in line for words in legend) for line in lines), lines


async def test_curve_legends_have_rows_of_their_own_above_the_data():
    from dataclasses import replace

    steps = range(0, 2000, 20)
    flat_at_the_top = {
        "train_acc": tuple((s, 0.2 + 0.7 * s / 2000) for s in steps),
        "val_acc": tuple((s, 0.9) for s in steps),  # at the top across the whole plot
    }
    app = PlotApp()
    async with app.run_test(size=(100, 30)) as pilot:
        plot = app.query_one(CurvesPlot)
        plot.show(replace(scripted_snapshot(), curves=flat_at_the_top))
        await pilot.pause()
        lines = drawn_text(plot).splitlines()
    legend_rows = [line for line in lines if " train" in line or " val" in line]
    assert len(legend_rows) == 2, lines
    braille = re.compile("[\u2801-\u28ff]")
    # the legend's own markers are braille too: what follows the label must be empty
    assert not any(braille.search(row.split(" val")[-1].split(" train")[-1]) for row in legend_rows), lines


async def test_the_last_x_tick_label_is_the_last_step_at_every_width():
    from dataclasses import replace

    # plotext's own ticks drop the last label of a narrow plot (two plots side by side at 80
    # columns, half a dialog) or of a long step number
    curves = {"train_acc": tuple((s, 0.5) for s in (*range(0, 12300, 50), 12345))}
    for width in (30, 36, 40, 45, 57, 80, 121, 200):
        app = PlotApp()
        async with app.run_test(size=(width, 24)) as pilot:
            plot = app.query_one(CurvesPlot)
            plot.show(replace(scripted_snapshot(), curves=curves))
            await pilot.pause()
            lines = drawn_text(plot).splitlines()
        ticks = lines[lines.index(next(line for line in lines if "└" in line)) + 1]
        assert ticks.split()[-1] == "12345", (width, ticks)
