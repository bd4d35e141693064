"""Adversarial accuracy: accuracy against ε for the latest attack, each ε over the run, and the
sanity flags of the latest attacks (rlr_engine.sanity, computed from the snapshot's records)."""

from __future__ import annotations

from textual.widgets import Static
from textual_plotext import PlotextPlot

from .markers import series_marker
from rlr_engine.catalog import ATTACKS
from rlr_engine.sanity import AttackRecord, SanityReport, sanity_report


def snapshot_sanity(snap) -> SanityReport | None:
    """The checks over the attacks run at the latest attacked step (the latest result per
    attack); None before the first attack. Accuracy is measured on the live subset."""
    if snap.adversarial is None:
        return None
    step = snap.adversarial.step
    latest = {r.attack: r for r in snap.adversarial_history if r.step == step and r.attack in ATTACKS}
    latest.setdefault(snap.adversarial.attack, snap.adversarial)
    records = [AttackRecord(r.attack, ATTACKS[r.attack].kind, ATTACKS[r.attack].norm, tuple(r.eps),
                            tuple(r.accuracy)) for r in latest.values() if r.attack in ATTACKS]
    return sanity_report(records, snap.dataset)


def flag_summary(report: SanityReport | None) -> str:
    """One line for a plot title: the flag codes, or that none fired."""
    if report is None:
        return ""
    if report.flags:
        return "⚠ " + ", ".join(sorted({f.code for f in report.flags}))
    return "checks: no flags"


Y_TICKS_WIDTH = 8  # the y axis's tick labels ("100.0") and the frame


def eps_plot_title(attack: str, step: int, flags: str, width: int) -> str:
    """The longest title that fits a plot ``width`` columns wide: at 80 columns the plot is half as
    wide, and plotext drops a title longer than the canvas (the width less the y axis ticks)."""
    titles = [f"{attack} at step {step}: accuracy (%) vs ε  {flags}", f"{attack} @ {step}: acc. % vs ε  {flags}",
              f"{attack} @ {step}: % vs ε  {flags}", f"{attack} @ {step}  {flags}", f"{attack} @ {step}"]
    return next((title.strip() for title in titles if len(title.strip()) <= width - Y_TICKS_WIDTH), titles[-1])


class AccuracyVsEps(PlotextPlot):
    """Accuracy (%) against ε of the latest evaluation; ε = 0 is the clean point. The title
    carries the sanity flags, shortened to the plot's width."""

    _snap = None

    def show(self, snap) -> None:
        self._snap = snap
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        result = snap.adversarial
        if result is None:
            plt.title("accuracy vs ε: no attack yet (press a)")
        else:
            plt.plot(list(result.eps), [100 * a for a in result.accuracy], marker="braille")
            plt.scatter(list(result.eps), [100 * a for a in result.accuracy])
            plt.title(eps_plot_title(result.attack, result.step, flag_summary(snapshot_sanity(snap)), self.size.width))
            plt.xlabel("ε")
        self.refresh()

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)


class SanityFlags(Static):
    """Every sanity flag of the latest attacks, and the checks that could not run."""

    def show(self, snap) -> None:
        report = snapshot_sanity(snap)
        self.update("no attack yet" if report is None else "\n".join(report.lines()))


class AccuracyHistory(PlotextPlot):
    """Accuracy at each ε over the attacks of the run (one line per ε)."""

    def show(self, snap) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        history = [r for r in snap.adversarial_history if snap.adversarial and r.eps == snap.adversarial.eps]
        if len(history) < 1:
            plt.title("accuracy per ε over the run: no attack yet")
        else:
            steps = [r.step for r in history]
            for i, eps in enumerate(history[-1].eps):
                plt.plot(steps, [100 * r.accuracy[i] for r in history], label=f"ε={eps:g}",
                         marker=series_marker(i, len(steps), self.app.no_color))
            plt.title("accuracy (%) per ε over the run")
            plt.xlabel("step")
        self.refresh()
