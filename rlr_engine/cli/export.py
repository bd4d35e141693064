"""``rlr export RUN_DIR --csv OUT``: a run's metrics.jsonl as one tidy CSV, a row per record and a
column per value (nested values flattened into named columns: see metrics_table). Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any, TextIO

from rlr_engine.cli.console import console
from rlr_engine.control.metrics_table import metrics_table
from rlr_engine.control.run_dirs import read_jsonl
from rlr_engine.control.run_files import CONFIG, METRICS
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.errors import UserError


def run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl; UserError when it is not a run directory."""
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (a file; give the directory that holds {CONFIG})")
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})")
    if not (run_dir / METRICS).is_file():
        raise UserError(f"{run_dir} has no {METRICS} yet: the run has logged nothing to export")
    return list(read_jsonl(run_dir / METRICS))


def write_csv(records: list[dict[str, Any]], handle: TextIO) -> int:
    """Write the table of ``records``; returns the number of columns. Missing values are empty."""
    columns, rows = metrics_table(records)
    writer = csv.DictWriter(handle, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(columns)


def cmd_export(args: argparse.Namespace) -> int:
    records = run_metrics(Path(args.run_dir))
    if args.csv == "-":
        write_csv(records, sys.stdout)
        return 0
    out = Path(args.csv)
    if out.is_dir():
        raise UserError(f"--csv {out}: is a directory; give a file name (or - for stdout)")
    if not out.parent.is_dir():
        raise UserError(f"--csv {out}: the directory {out.parent} does not exist")
    table = io.StringIO(newline="")
    columns = write_csv(records, table)
    try:
        write_text_atomic(out, table.getvalue())
    except OSError as error:
        raise UserError(f"--csv {out}: cannot be written: {error}") from None
    console.print(f"{len(records)} records, {columns} columns → {out}", highlight=False)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a run's metrics as one CSV (a row per record, a column per value)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (runs/<id>)")
    p.add_argument("--csv", required=True, metavar="OUT", help="CSV file to write, - for stdout")
    p.set_defaults(func=cmd_export)
