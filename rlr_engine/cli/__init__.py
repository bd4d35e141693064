"""``rlr``: the headless command line, one module per command (``presets``, ``train``, ``runs``,
``eval``, ``compare``, ``export``). ``python -m rlr_engine.cli`` runs it too.

Parsing, ``--help`` and every validation error import no torch: each command module imports
only the core and the control surface at its top and loads the run machinery inside the
command, once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rlr_engine import __version__
from rlr_engine.cli import compare, eval, export, presets, runs, train
from rlr_engine.cli.console import USER_ERROR, print_error
from rlr_engine.control.run_dirs import RunBusy
from rlr_engine.core.errors import CannotStart, RunFailed, UserError

COMMANDS = (presets, train, runs, eval, compare, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlr", description="Robust low-rank training (CondLR), headless.")
    parser.add_argument("--version", action="version", version=f"rlr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UserError, CannotStart, RunBusy, RunFailed) as error:
        print_error(error)
        return USER_ERROR
    except KeyboardInterrupt:  # Ctrl+C where no run is there to stop cleanly (loading, rlr eval)
        print_error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of stdout left (rlr export --csv - | head): end quietly. Python would report
        # the pipe again when it flushes stdout at exit; its documentation advises this redirect.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
