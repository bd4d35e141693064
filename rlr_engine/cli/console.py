"""The terminal side of headless runs: the consoles, one-line errors, the rich progress display
that follows an engine (``rlr train``, ``rlr compare``) and the summary of a run that ended."""

from __future__ import annotations

import sys

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rlr_engine.control.records import Snapshot
from rlr_engine.core.formatting import pct, versus_dense

USER_ERROR = 2  # the exit code of every mistake the user can fix: a typo, a missing data set or device

# Off a terminal (a pipe, a file, a CI log) nothing is wrapped: rich would otherwise break every
# line at 80 columns. Tables are as wide as their cells.
HEADLESS_WIDTH = 10_000


def make_console(stderr: bool = False) -> Console:
    """rich's console for a terminal; for anything else one that never wraps a line."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        terminal = False
    if terminal:
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=HEADLESS_WIDTH)


console = make_console()
err_console = make_console(stderr=True)


def print_grid(table: RenderableType, out: Console) -> None:
    """A borderless table on ``out``. Off a terminal its lines end where their text does (rich
    pads every cell of the last column to that column's width)."""
    if out.is_terminal:
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    out.out("\n".join(line.rstrip() for line in captured.get().splitlines()), highlight=False)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr. The message is escaped: errors quote paths, library
    messages and extras such as ``rlr[tensorboard]``, whose brackets rich would read as markup."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False)


def print_warning(message: object) -> None:
    """``warning: <message>`` on stderr (escaped as ``print_error``'s)."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)


def fmt_pct(value: float | None) -> str:
    return pct(value, digits=2)


def watch(engine, title: str, show: bool = True):
    """Follow the engine until it ends: a rich progress bar and the run's events (``show``), or
    the events as plain lines (a detached engine's log). A terminal that vanishes stops the
    display, never the wait. Returns the last snapshot."""
    last_event = 0
    done = False

    def new_events(snap):
        nonlocal last_event
        events = [e for e in snap.events if e.seq > last_event]
        if snap.events:
            last_event = max(last_event, snap.events[-1].seq)
        return events

    try:
        if not show:
            while not done:
                done = engine.join(timeout=0.5)
                for event in new_events(engine.latest()):
                    print(f"step {event.step} [{event.kind}] {event.message}", flush=True)
            return engine.latest()
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(title, total=None, info="")
            while not done:
                done = engine.join(timeout=0.25)
                snap = engine.latest()
                for event in new_events(snap):
                    if event.kind != "checkpoint":
                        progress.console.print(f"[dim]step {event.step}[/dim] {escape(event.message)}", highlight=False)
                loss = "–" if snap.train_loss is None else f"{snap.train_loss:.3f}"
                progress.update(
                    task,
                    total=snap.total_steps or None,
                    completed=snap.step,
                    description=f"{title} epoch {snap.epoch}/{snap.epochs}",
                    info=f"loss {loss}  acc {fmt_pct(snap.train_acc)}  {snap.samples_per_s:,.0f} samples/s",
                )
    except OSError:
        pass  # the terminal is gone (SIGHUP follows): keep waiting without a display
    engine.join()
    return engine.latest()


def print_summary(snap: Snapshot) -> None:
    """Clean and adversarial accuracy per ε, ranks, κ and compression of a finished run."""
    result = snap.adversarial
    if result is not None:
        # Headings are lines of their own (a table title wraps at the table's width and would
        # break the preset's name); the attack says when it ran, since the model is later.
        images = f" on {result.samples} test images" if result.samples else ""
        seed = "" if result.seed is None else f", seed {result.seed}"
        console.print(
            f"[bold]{snap.preset}[/bold]: accuracy under {result.attack}{images} at step {result.step}{seed}"
            f"{'' if result.step == snap.step else f' (the model is at step {snap.step})'}",
            highlight=False,
        )
        table = Table()
        table.add_column("ε", justify="right")
        table.add_column("accuracy", justify="right")
        for eps, acc in zip(result.eps, result.accuracy):
            table.add_row(f"{eps:g}", fmt_pct(acc))
        console.print(table)
    factorised = sum(1 for s in snap.layers if s.low_rank)
    console.print(
        f"layers — {factorised} of {len(snap.layers)} factorised; {snap.params:,} parameters, "
        f"{versus_dense(snap.compression)}, {snap.rank_fraction:.0%} of the factorised rank kept",
        highlight=False,
    )
    # Every Linear / Conv2d: a factorised one with its rank, a dense one marked so; the shape is
    # the dense weight's as a matrix (a convolution's c_out × c_in·kh·kw), what the rank is out of.
    layers = Table()
    for column in ("layer", "dense shape", "rank", "κ", "σ_max"):
        layers.add_column(column, justify="right" if column != "layer" else "left")
    for s in snap.layers:
        rank = f"{s.rank}/{s.full_rank}" if s.low_rank else "dense"
        layers.add_row(s.name, f"{s.shape[0]}×{s.shape[1]}", rank, f"{s.kappa:.3g}", f"{s.sigma_max:.3g}")
    console.print(layers)
    console.print(
        f"validation accuracy {fmt_pct(snap.val_acc)}, test accuracy {fmt_pct(snap.test_acc)}, "
        f"{snap.step} steps; run directory {snap.run_dir}"
    )
