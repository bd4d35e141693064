"""Adversarial accuracy: accuracy against ε for the latest attack, and each ε over the run."""

from __future__ import annotations

from textual_plotext import PlotextPlot

from .markers import series_marker


class AccuracyVsEps(PlotextPlot):
    """Accuracy (%) against ε of the latest evaluation; ε = 0 is the clean point."""

    def show(self, snap) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        result = snap.adversarial
        if result is None:
            plt.title("accuracy vs ε: no attack yet (press a)")
        else:
            plt.plot(list(result.eps), [100 * a for a in result.accuracy], marker="braille")
            plt.scatter(list(result.eps), [100 * a for a in result.accuracy])
            plt.title(f"{result.attack} at step {result.step}: accuracy (%) vs ε")
            plt.xlabel("ε")
        self.refresh()


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
