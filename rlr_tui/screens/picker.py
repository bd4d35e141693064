"""Pick a preset to train, a running run to attach to, a stopped one to resume, or a finished
one to extend (train it on for more epochs)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from rlr_engine.control.run_dirs import list_runs
from rlr_engine.core.config import method_label
from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import available_presets, load_preset

from ..messages import OpenRun, StartRun
from ..widgets.cursor_table import CursorTable
from ..widgets.starting_notice import StartingNotice
from .extend import extend_dialog

RUNS_REFRESH_S = 2.0  # runs start, finish and die while the picker shows: list them again this often


class PickerScreen(Screen):
    """Two tables: presets (Enter starts one) and runs — running ones first (Enter attaches), then
    stopped or dead ones (Enter resumes), then finished ones (Enter asks for epochs to add and
    extends). Failed runs are not listed. The runs are listed off the UI thread, the first time
    too: asking live engines may take a moment."""

    BINDINGS = [Binding("tab", "app.focus_next", "Next table", id="next-table", show=True)]

    class RunsListed(Message):
        """The runs under the runs root, listed again off the UI thread: (key, cells) rows, and
        the epochs of each finished run by key (what extending it adds to)."""

        def __init__(self, rows: list[tuple[str, tuple[str, ...]]], finished: dict[str, int]) -> None:
            super().__init__()
            self.rows, self.finished = rows, finished

    def __init__(self, overrides: list[str], runs_root) -> None:
        super().__init__()
        self.overrides, self.runs_root = overrides, runs_root
        self._runs_shown: list[tuple[str, tuple[str, ...]]] | None = None
        self._finished: dict[str, int] = {}  # run key → epochs, for the finished runs shown

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label("[b]rlr[/b] — pick a preset and press Enter (Tab: previous runs)", id="picker-title")
            yield StartingNotice(id="starting")
            yield CursorTable(id="presets", cursor_type="row", zebra_stripes=True)
            yield Label("", id="preset-description")
            yield Label("Runs — listing…", id="runs-title")
            yield CursorTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        presets = self.query_one("#presets", DataTable)
        presets.add_columns("name", "data set", "model", "method", "τ", "rank kept", "what it is for")
        names = list(available_presets())
        for name in names:
            try:
                c = load_preset(name)
                presets.add_row(
                    name,
                    c.dataset,
                    c.model,
                    "dense" if not c.is_low_rank else c.method_label,
                    "–" if not c.is_low_rank else f"{c.tau:g}",
                    f"{c.rank_fraction:.0%}" if c.is_low_rank else "100%",
                    c.description,
                    key=name,
                )
            except PresetError as error:
                presets.add_row(name, "", "", "invalid", "", "", str(error), key=name)
        if "quickstart" in names:
            presets.move_cursor(row=names.index("quickstart"), animate=False)
        self.query_one("#runs", DataTable).add_columns("run", "state", "step", "method")
        self.refresh_runs()
        self.set_interval(RUNS_REFRESH_S, self.refresh_runs)
        presets.focus()

    def list_runs(self) -> RunsListed:
        """Live runs, then stopped or dead ones that can be resumed, then finished ones that can be
        extended (asks each live engine: may take a moment; run off the UI thread)."""
        rows: list[tuple[str, tuple[str, ...]]] = []
        finished: dict[str, int] = {}
        infos = [info for info in list_runs(self.runs_root) if info.live or info.resumable or info.finished]
        for info in sorted(infos, key=lambda info: info.finished):  # stable: live, resumable, finished
            step = "–" if info.step is None else f"{info.step}/{info.total_steps or '?'}"
            state = info.state if info.live else f"{info.state} ({'extend' if info.finished else 'resume'})"
            config = info.config  # τ may have been changed while the run trained: name the current one
            method = method_label(config.method, config.tau if info.tau is None else info.tau, config.beta)
            rows.append((str(info.path), (info.path.name, state, step, method)))
            if info.finished:
                finished[str(info.path)] = int((info.summary or {}).get("epochs", config.epochs))
        return self.RunsListed(rows, finished)

    def refresh_runs(self) -> None:
        if not self.is_current:  # under a dashboard: do not ask its engine every few seconds
            return
        self.run_worker(self._list_runs_in_thread, thread=True, exclusive=True, group="runs")

    def _list_runs_in_thread(self) -> None:
        self.post_message(self.list_runs())

    @on(RunsListed)
    def on_runs_listed(self, message: RunsListed) -> None:
        self._finished = message.finished
        self.query_one("#runs-title", Label).update(
            "Runs — Enter: attach (running), resume (stopped), extend (finished)"
            if message.rows
            else "Runs — none yet under " + str(self.runs_root)
        )
        self.show_runs(message.rows)

    def show_runs(self, rows: list[tuple[str, tuple[str, ...]]]) -> None:
        """Show the runs, the cursor staying on the run it was on."""
        if rows == self._runs_shown:
            return
        table = self.query_one("#runs", DataTable)
        keys = [key for key, _ in rows]
        current = self._runs_shown[table.cursor_row][0] if self._runs_shown and table.row_count else None
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if current in keys:
            table.move_cursor(row=keys.index(current), animate=False)
        self._runs_shown = rows

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def on_descendant_focus(self, event) -> None:
        if event.widget.id == "runs":
            self.refresh_runs()

    @on(DataTable.RowHighlighted, "#presets")
    def describe_preset(self, event: DataTable.RowHighlighted) -> None:
        row = event.data_table.get_row(event.row_key)
        self.query_one("#preset-description", Label).update(f"[b]{row[0]}[/b]: {row[-1]}")

    @on(DataTable.RowSelected, "#presets")
    def start_preset(self, event: DataTable.RowSelected) -> None:
        self.post_message(StartRun(str(event.row_key.value)))

    @on(DataTable.RowSelected, "#runs")
    def open_run(self, event: DataTable.RowSelected) -> None:
        run = str(event.row_key.value)
        if run not in self._finished:
            self.post_message(OpenRun(run))  # attaches when the run is alive
            return

        def extend(epochs: int | None) -> None:
            if epochs is not None:
                self.post_message(OpenRun(run, [f"epochs={epochs}"]))

        self.app.push_screen(extend_dialog(event.data_table.get_row(event.row_key)[0], self._finished[run]), extend)
