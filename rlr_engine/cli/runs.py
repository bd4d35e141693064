"""``rlr runs``: the runs under a directory — running, paused, resumable (``--all``: every run)."""

from __future__ import annotations

import argparse

from rich.table import Table

from rlr_engine.cli.console import console, print_grid
from rlr_engine.control.run_dirs import list_runs
from rlr_engine.control.run_files import DEFAULT_RUNS
from rlr_engine.core.formatting import STATE_STYLES


def cmd_runs(args: argparse.Namespace) -> int:
    # By default what can be attached to or resumed (as the dashboard's picker lists them).
    runs = [r for r in list_runs(args.root) if args.all or r.live or r.resumable]
    if not runs:
        console.print(
            f"no {'' if args.all else 'live or resumable '}runs under {args.root}"
            f"{'' if args.all else ' (--all lists finished, failed and unresumable ones too)'}"
        )
        return 0
    console.print(f"[bold]runs under {args.root}[/bold]", highlight=False)
    # Run names are what users copy (rlr-tui --attach NAME): their column never wraps; the
    # details beside them do.
    table = Table.grid(padding=(0, 2))
    table.add_column("run", no_wrap=True, min_width=max(len(r.path.name) for r in runs))
    table.add_column("state", no_wrap=True)
    table.add_column("details", overflow="fold")
    for r in runs:
        step = "–" if r.step is None else f"{r.step}/{r.total_steps if r.total_steps else '?'}"
        details = [
            r.config.name,
            f"step {step}",
            f"τ {'–' if r.tau is None else f'{r.tau:g}'}",
            f"checkpoint {'–' if r.last_checkpoint_step is None else r.last_checkpoint_step}",
        ]
        if r.pid and r.live:
            details.append(f"pid {r.pid}")
        table.add_row(r.path.name, f"[{STATE_STYLES.get(r.state, '')}]{r.state}[/]", " · ".join(details))
    print_grid(table, console)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs", help="list runs: running, paused, and stopped or dead ones with a checkpoint (--all: every run)"
    )
    p.add_argument(
        "--all", action="store_true", help="also list finished and failed runs, and runs without a checkpoint"
    )
    # --root: the flag's name before it matched train's and rlr-tui's --runs
    p.add_argument(
        "--runs",
        "--root",
        dest="root",
        default=DEFAULT_RUNS,
        metavar="DIR",
        help=f"where run directories are (default: {DEFAULT_RUNS})",
    )
    p.set_defaults(func=cmd_runs)
