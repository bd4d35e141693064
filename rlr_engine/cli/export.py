"""``rlr export RUN``: what a run produced, in files other tools read.

- ``--csv OUT``: its metrics.jsonl as one tidy CSV, a row per record and a column per value
  (nested values flattened into named columns: see metrics_table). Torch-free.
- ``--model FILE.pt2``: its trained model as a torch.export program, runnable without rlr
  (``torch.export.load(FILE).module()``); ``--onnx FILE.onnx``: as ONNX. Factors kept, or
  multiplied back into dense weights with ``--merge``; each checked against the run's model
  when written (run/model_export.py, which loads torch: imported only for these).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from rlr_engine.cli.console import console, err_console
from rlr_engine.control.metrics_table import metrics_table
from rlr_engine.control.run_dirs import read_jsonl
from rlr_engine.control.run_files import CHECKPOINT, CONFIG, METRICS
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.errors import UserError
from rlr_engine.core.extras import EXPORT_PACKAGES, export_unavailable, installed


def check_run_dir(run_dir: Path) -> None:
    """UserError unless ``run_dir`` is a run directory."""
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run directory (a file; give the directory that holds {CONFIG})")
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})")


def run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run directory's metrics.jsonl; UserError when it is not a run directory."""
    check_run_dir(run_dir)
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


def check_target(flag: str, out: Path) -> None:
    """UserError unless ``out`` can be written: not a directory, in a directory that exists and
    that this user may write to."""
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a directory; give a file name")
    if not out.parent.is_dir():
        raise UserError(f"{flag} {out}: the directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"{flag} {out}: cannot be written (no permission)")


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (args.csv or args.model or args.onnx):
        raise UserError("say what to export: --csv OUT, --model FILE.pt2 and/or --onnx FILE.onnx")
    if args.merge and not (args.model or args.onnx):
        raise UserError("--merge applies to --model and --onnx (it multiplies the factors back into dense weights)")
    models = [(flag, Path(path)) for flag, path in (("--model", args.model), ("--onnx", args.onnx)) if path]
    # Everything that can be checked is checked before anything is written.
    if args.csv:
        records = run_metrics(run_dir)
        if args.csv != "-":
            check_target("--csv", Path(args.csv))
    else:
        check_run_dir(run_dir)
    if models and not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"{run_dir} has no {CHECKPOINT} yet: there is no trained model to export")
    for flag, out in models:
        check_target(flag, out)
    if args.onnx and not all(installed(p) for p in EXPORT_PACKAGES):
        raise export_unavailable()
    if args.csv:
        export_csv(records, args.csv)
    if models:
        # With the CSV on stdout, what is said of the models goes to stderr: stdout stays the CSV alone.
        export_models(run_dir, args.model, args.onnx, args.merge, err_console if args.csv == "-" else console)
    return 0


def export_csv(records: list[dict[str, Any]], target: str) -> None:
    if target == "-":
        write_csv(records, sys.stdout)
        return
    out = Path(target)
    table = io.StringIO(newline="")
    columns = write_csv(records, table)
    try:
        write_text_atomic(out, table.getvalue())
    except OSError as error:
        raise UserError(f"--csv {out}: cannot be written: {error}") from None
    console.print(f"{len(records)} records, {columns} columns → {out}", highlight=False)


def export_models(run_dir: Path, program: str | None, onnx: str | None, merge: bool, out: Console = console) -> None:
    from rlr_engine.run.model_export import ExportSource, export_onnx, export_program

    with out.status(f"loading {run_dir}"):
        source = ExportSource.load(run_dir, merge)
    for target, export in ((program, export_program), (onnx, export_onnx)):
        if not target:
            continue
        with out.status(f"writing and checking {target}"):
            try:
                report = export(source, Path(target), merge)
            except OSError as error:
                raise UserError(f"{target}: cannot be written: {error}") from None
        factors = "factors multiplied into dense weights" if report.merged else "factors kept"
        out.print(
            f"{report.path}: {report.kind} of {source.name} at step {source.step} ({factors}) — "
            f"{report.params:,} parameters, {_size(report.size_bytes)}; test accuracy {report.accuracy:.2%} on "
            f"{report.images:,} images (the run's model: {report.run_accuracy:.2%}; outputs within "
            f"{report.max_difference:.1g} of it)",
            highlight=False,
        )


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} bytes"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a run's metrics as CSV, its trained model as a torch.export program or ONNX",
        description="Write a run's metrics as one CSV (a row per record, a column per value) and/or its "
        "trained model as a torch.export program (torch.export.load(FILE).module() runs it without rlr) "
        "or an ONNX file. Model files are checked against the run's model when written.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (runs/<id>)")
    p.add_argument("--csv", metavar="OUT", help="CSV file to write, - for stdout")
    p.add_argument("--model", metavar="FILE.pt2", help="torch.export program to write")
    p.add_argument("--onnx", metavar="FILE.onnx", help="ONNX file to write (needs pip install 'rlr[export]')")
    p.add_argument(
        "--merge", action="store_true", help="multiply the factors back into dense weights (default: keep them)"
    )
    p.set_defaults(func=cmd_export)
