"""``rlr presets``: what can be trained, one line each."""

from __future__ import annotations

import argparse

from rich.table import Table

from rlr_engine.cli.console import console, print_grid
from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import available_presets, load_preset


def cmd_presets(args: argparse.Namespace) -> int:
    presets = available_presets()
    console.print("[bold]rlr presets[/bold] (rlr train NAME, rlr-tui NAME)")
    # A grid, not a boxed table: names are what users copy, so their column never wraps and is
    # as wide as the longest name; the details beside them wrap instead.
    table = Table.grid(padding=(0, 2))
    table.add_column("name", no_wrap=True, min_width=max((len(name) for name in presets), default=4))
    table.add_column("what it trains", overflow="fold")
    for name, path in presets.items():
        try:
            c = load_preset(str(path))
        except PresetError as error:
            table.add_row(f"[bold]{name}[/bold]", f"[red]invalid: {error}[/red]")
            continue
        kept = f"{c.rank_fraction:.0%}" if c.is_low_rank else "100%"
        table.add_row(
            f"[bold]{name}[/bold]",
            f"{c.dataset} · {c.model} · {c.method_label} · rank {kept}\n[dim]{c.description}[/dim]",
        )
    print_grid(table, console)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the available presets")
    p.set_defaults(func=cmd_presets)
