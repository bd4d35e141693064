"""The terminal side of headless runs: the consoles, the user-error type, and the rich progress
display that follows an engine (``rlr train``, ``rlr compare``)."""

from __future__ import annotations

from rlr_engine.core.formatting import pct

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


def print_error(message: object) -> None:
    """``error: <message>`` on stderr. The message is escaped: errors quote paths, library
    messages and extras such as ``rlr[tensorboard]``, whose brackets rich would read as markup."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False)


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
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task(title, total=None, info="")
            while not done:
                done = engine.join(timeout=0.25)
                snap = engine.latest()
                for event in new_events(snap):
                    if event.kind != "checkpoint":
                        progress.console.print(f"[dim]step {event.step}[/dim] {escape(event.message)}", highlight=False)
                loss = "–" if snap.train_loss is None else f"{snap.train_loss:.3f}"
                progress.update(task, total=snap.total_steps or None, completed=snap.step,
                                description=f"{title} epoch {snap.epoch}/{snap.epochs}",
                                info=f"loss {loss}  acc {fmt_pct(snap.train_acc)}  "
                                     f"{snap.samples_per_s:,.0f} samples/s")
    except OSError:
        pass  # the terminal is gone (SIGHUP follows): keep waiting without a display
    engine.join()
    return engine.latest()
