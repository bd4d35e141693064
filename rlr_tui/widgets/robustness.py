"""Adversarial accuracy: accuracy against ε for the latest result of each attack (one asked for
with a is not replaced by the next scheduled one), each ε over the run, and the sanity flags of
the latest attacks (rlr_engine.core.sanity, computed from the snapshot's records)."""

from __future__ import annotations

from collections import Counter

from textual_plotext import PlotextPlot

from rlr_engine.control.records import AttackResult, Snapshot
from rlr_engine.core.catalog import ATTACKS
from rlr_engine.core.sanity import AttackRecord, SanityReport, sanity_report

from .axes import legend_room, step_ticks
from .markers import series_marker


def snapshot_sanity(snap: Snapshot) -> SanityReport | None:
    """The checks over the attacks run at the latest attacked step (the latest result per
    attack); None before the first attack. Accuracy is measured on the live subset."""
    if snap.adversarial is None:
        return None
    step = snap.adversarial.step
    latest = {r.attack: r for r in snap.adversarial_history if r.step == step and r.attack in ATTACKS}
    latest.setdefault(snap.adversarial.attack, snap.adversarial)
    records = [
        AttackRecord(r.attack, ATTACKS[r.attack].kind, ATTACKS[r.attack].norm, tuple(r.eps), tuple(r.accuracy))
        for r in latest.values()
        if r.attack in ATTACKS
    ]
    return sanity_report(records, snap.dataset)


def flag_summary(report: SanityReport | None) -> str:
    """One line for a plot title: the flag codes, or that none fired."""
    if report is None:
        return ""
    if report.flags:
        return "⚠ " + ", ".join(sorted({f.code for f in report.flags}))
    return "checks: no flags"


Y_TICKS_WIDTH = 8  # the y axis's tick labels ("100.0") and the frame


def fitting_title(titles: list[str], width: int) -> str:
    """The first (longest) of ``titles`` that fits a plot ``width`` columns wide: at 80 columns a
    plot is half as wide, and plotext drops a title longer than the canvas (the width less the
    y axis ticks)."""
    return next((title.strip() for title in titles if len(title.strip()) <= width - Y_TICKS_WIDTH), titles[-1].strip())


def eps_plot_title(attack: str, step: int, flags: str, width: int) -> str:
    return fitting_title(
        [
            f"{attack} at step {step}: accuracy (%) vs ε  {flags}",
            f"{attack} @ {step}: acc. % vs ε  {flags}",
            f"{attack} @ {step}: % vs ε  {flags}",
            f"{attack} @ {step}  {flags}",
            f"{attack} @ {step}",
        ],
        width,
    )


def latest_per_attack(snap: Snapshot) -> list[AttackResult]:
    """The latest result of each attack run so far, the most recent first."""
    latest: dict[str, AttackResult] = {}
    for result in (*snap.adversarial_history, *((snap.adversarial,) if snap.adversarial else ())):
        if result.attack not in latest or result.step >= latest[result.attack].step:
            latest[result.attack] = result
    return sorted(latest.values(), key=lambda r: r.step, reverse=True)


def scheduled_attack_history(snap: Snapshot) -> list[AttackResult]:
    """The results of one attack over the run, never mixed with another: the attack run most often
    (the run's scheduled one; on a tie the latest run), at its latest ε grid. An attack started by
    hand (a) in between is left out, so no line joins an FGSM point to a PGD one."""
    history = snap.adversarial_history
    if not history:
        return []
    counts = Counter(r.attack for r in history)
    last_index = {r.attack: i for i, r in enumerate(history)}
    attack = max(counts, key=lambda a: (counts[a], last_index[a]))
    eps = history[last_index[attack]].eps
    return [r for r in history if r.attack == attack and r.eps == eps]


class AccuracyVsEps(PlotextPlot):
    """Accuracy (%) against ε of the latest result of each attack, one line each, labelled with
    the attack and its step; ε = 0 is the clean point. The title carries the sanity flags,
    shortened to the plot's width. ``shown``: the (attack, step) of each line drawn."""

    _snap: Snapshot | None = None
    shown: tuple[tuple[str, int], ...] = ()

    def show(self, snap: Snapshot) -> None:
        self._snap = snap
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        results = latest_per_attack(snap)
        self.shown = tuple((r.attack, r.step) for r in results)
        flags = flag_summary(snapshot_sanity(snap))
        if not results:
            plt.title("accuracy vs ε: no attack yet (press a)")
        elif len(results) == 1:
            (result,) = results
            plt.plot(list(result.eps), [100 * a for a in result.accuracy], marker="braille")
            plt.scatter(list(result.eps), [100 * a for a in result.accuracy])
            plt.title(eps_plot_title(result.attack, result.step, flags, self.size.width))
        else:
            for index, result in enumerate(results):
                plt.plot(
                    list(result.eps),
                    [100 * a for a in result.accuracy],
                    label=f"{result.attack} @ {result.step}",
                    marker=series_marker(index, len(result.eps), self.app.no_color),
                )
            legend_room(plt, [100 * a for r in results for a in r.accuracy], len(results), self.size.height)
            plt.title(
                fitting_title(
                    [
                        f"latest of each attack: accuracy (%) vs ε  {flags}",
                        f"each attack: % vs ε  {flags}",
                        f"% vs ε  {flags}",
                        "% vs ε",
                    ],
                    self.size.width,
                )
            )
        if results:
            plt.xlabel("ε")
        self.refresh()

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)


class AccuracyHistory(PlotextPlot):
    """Accuracy at each ε over the run's scheduled attack (one line per ε, one attack)."""

    _snap: Snapshot | None = None

    def show(self, snap: Snapshot) -> None:
        self._snap = snap
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        history = scheduled_attack_history(snap)
        if len(history) < 1:
            plt.title("accuracy per ε over the run: no attack yet")
        else:
            steps = [r.step for r in history]
            for i, eps in enumerate(history[-1].eps):
                plt.plot(
                    steps,
                    [100 * r.accuracy[i] for r in history],
                    label=f"ε={eps:g}",
                    marker=series_marker(i, len(steps), self.app.no_color),
                )
            step_ticks(plt, steps, self.size.width)
            legend_room(plt, [100 * a for r in history for a in r.accuracy], len(history[-1].eps), self.size.height)
            attack = history[-1].attack
            plt.title(
                fitting_title(
                    [
                        f"{attack}: accuracy (%) per ε over the run",
                        f"{attack}: accuracy (%) per ε",
                        f"{attack}: % per ε",
                    ],
                    self.size.width,
                )
            )
            plt.xlabel("step")
        self.refresh()

    def on_resize(self) -> None:
        if self._snap is not None:
            self.show(self._snap)
