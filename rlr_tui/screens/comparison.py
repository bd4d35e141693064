"""A finished comparison (``rlr compare``): the table per method and accuracy against ε."""

from __future__ import annotations

import json
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label
from textual_plotext import PlotextPlot

from rlr_engine.control import comparison_files

from ..format import num, pct, pct_pm
from ..widgets.markers import series_marker


class ComparisonError(Exception):
    """The directory holds no finished comparison."""


def load_comparison(directory: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of the comparison's results and the attacks they report."""
    path = Path(directory) / comparison_files.RESULTS_JSON
    if not path.is_file():
        raise ComparisonError(
            f"{directory} holds no finished comparison (no {comparison_files.RESULTS_JSON}); "
            f"run `rlr compare ... --out {directory}` first"
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        spec = json.loads((Path(directory) / comparison_files.SPEC).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ComparisonError(f"{path} cannot be read: {error}") from None
    attacks = [a for a in spec.get("attacks", []) if rows and a in rows[0]]
    if not rows or not attacks:
        raise ComparisonError(f"{path} has no results")
    return rows, attacks


class ComparisonScreen(Screen):
    """Per method: rank kept, parameter compression, accuracy per ε (mean ± std), κ; and a plot of
    accuracy against ε with one line per method. ``a`` switches between the attacks."""

    BINDINGS = [
        Binding("a", "next_attack", "Next attack", id="next-attack", tooltip="Show the next attack of the comparison")
    ]

    def __init__(self, directory: str | Path, rows: list[dict], attacks: list[str]) -> None:
        super().__init__()
        self.directory, self.rows, self.attacks = Path(directory), rows, attacks
        self.attack_index = 0

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("", id="comparison-title")
            yield DataTable(id="comparison-table", zebra_stripes=True, cursor_type="row")
            yield PlotextPlot(id="comparison-plot")
        yield Footer()

    def on_mount(self) -> None:
        self.show()

    def show(self) -> None:
        attack = self.attacks[self.attack_index]
        self.query_one("#comparison-title", Label).update(
            f"[b]{self.directory}[/b] — {attack}, mean ± std over {self.rows[0]['seeds']} seed(s)"
        )
        table = self.query_one(DataTable)
        table.clear(columns=True)
        eps = self.rows[0][attack]["eps"]
        table.add_columns(
            "method", "rank", "compr.", *[("clean" if e == 0 else f"ε={e:g}") for e in eps], "mean κ", "max κ"
        )
        for row in self.rows:
            cells = [pct_pm(m, s) for m, s in row[attack]["accuracy"]]
            table.add_row(
                row["method"],
                f"{row['rank_fraction']:.0%}",
                pct(row["compression"]),
                *cells,
                num(row["kappa_mean"][0]),
                num(row["kappa_max"][0]),
            )
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        for index, row in enumerate(self.rows):
            plt.plot(
                eps,
                [100 * m for m, _ in row[attack]["accuracy"]],
                label=f"{row['method']} {row['rank_fraction']:.0%}",
                marker=series_marker(index, len(eps), self.app.no_color),
            )
        plt.title(f"accuracy (%) under {attack} vs ε")
        plt.xlabel("ε")
        plot.refresh()

    def action_next_attack(self) -> None:
        self.attack_index = (self.attack_index + 1) % len(self.attacks)
        self.show()
