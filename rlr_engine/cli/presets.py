"""``rlr presets``: what can be trained, one line each; then the examples for a model and data
of the user's, by path (they need the user's data)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.table import Table

from rlr_engine.cli.console import console, print_grid
from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import available_presets, example_presets, load_preset


def _table(presets: dict[str, Path], names: dict[str, str]) -> Table:
    # A grid, not a boxed table: names are what users copy, so their column never wraps and is
    # as wide as the longest name; the details beside them wrap instead.
    table = Table.grid(padding=(0, 2))
    table.add_column("name", no_wrap=True, min_width=max((len(name) for name in names.values()), default=4))
    table.add_column("what it trains", overflow="fold")
    for key, path in presets.items():
        name = names[key]
        try:
            c = load_preset(str(path))
        except PresetError as error:
            table.add_row(f"[bold]{name}[/bold]", f"[red]invalid: {error}[/red]")
            continue
        kept = f"{c.rank_fraction:.0%}" if c.is_low_rank else "100%"
        if c.is_low_rank and c.rank_energy:
            kept = f"{c.rank_energy:.0%} energy"
        table.add_row(
            f"[bold]{name}[/bold]",
            f"{_short(c.dataset)} · {_short(c.model)} · {c.method_label} · rank {kept}\n[dim]{c.description}[/dim]",
        )
    return table


def _short(text: str) -> str:
    """A setting that holds an absolute path under the working directory, with it relative."""
    return text.replace(str(Path.cwd()) + os.sep, "")


def _shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:  # another drive
        return str(path)


def cmd_presets(args: argparse.Namespace) -> int:
    presets = available_presets()
    console.print("[bold]rlr presets[/bold] (rlr train NAME, rlr-tui NAME)")
    print_grid(_table(presets, {name: name for name in presets}), console)
    examples = example_presets()
    if examples:
        console.print(
            "\n[bold]examples for your own model and data[/bold] (by path; each needs your data: "
            "rlr train PATH --set dataset=imagefolder:DIR)",
            highlight=False,
        )
        print_grid(_table(examples, {name: _shown_path(path) for name, path in examples.items()}), console)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the available presets, and the examples for your own model and data")
    p.set_defaults(func=cmd_presets)
