"""``rlr train``: train a preset, or resume a run, with a progress display (``--detach``: in the
background; ``--nproc N``: on N processes, see data_parallel.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rlr_engine.cli.console import USER_ERROR, console, print_error, print_summary, watch
from rlr_engine.control.detached import ENGINE_CHILD_FLAG, READY, LaunchError, start_detached
from rlr_engine.control.run_dirs import create_run_dir, discard_run_dir, write_config
from rlr_engine.control.run_files import DEFAULT_RUNS
from rlr_engine.control.run_plan import prepare_run
from rlr_engine.core.catalog import DEVICES
from rlr_engine.core.errors import CannotStart, UserError
from rlr_engine.core.presets import restored_keys_set


def launched_by_torchrun() -> bool:
    """Whether this process is a worker that torchrun (or a launcher like it) started: it sets
    these for every worker (run.distributed.ranks_from_environment reads them)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def train_arguments(args: argparse.Namespace) -> list[str]:
    """The arguments of ``rlr train`` that describe the run (for the detached engine)."""
    argv = [args.preset] if args.preset else []
    for item in args.set:
        argv += ["--set", item]
    if args.device:
        argv += ["--device", args.device]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.tensorboard:
        argv += ["--tensorboard"]
    if args.nproc > 1:
        argv += ["--nproc", str(args.nproc)]
    return argv + ["--runs", args.runs]


def cmd_train(args: argparse.Namespace) -> int:
    if args.tensorboard:  # the flag is that setting: every path below (detached, --nproc) reads --set
        args.set, args.tensorboard = [*args.set, "tensorboard=true"], False
    if args.detach and not args.engine_child:
        return start_detached_run(args)
    # -- torch.distributed: a torchrun worker, or the launcher of --nproc N workers --
    if launched_by_torchrun():
        from rlr_engine.cli import data_parallel

        return data_parallel.train_worker(args) or 0  # torch elastic's @record types it int | None
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: must be >= 1 (processes to train on, one per GPU on CUDA)")
    if args.nproc > 1:
        prepare_run(args.preset, args.set, args.resume, args.runs, args.device)  # a typo: before torch loads
        from rlr_engine.cli import data_parallel

        return data_parallel.launch(args)
    if args.run_dir:
        raise UserError("--run-dir is set by the --nproc launcher for its workers; use --resume RUN_DIR")
    # -- end torch.distributed --
    overrides = args.set
    config, run_dir, new = prepare_run(args.preset, overrides, args.resume, args.runs, args.device)
    from rlr_engine.run.engine import Engine  # torch: once the run is known to be good
    from rlr_engine.run.host import become_detached_log, serve_run

    engine = Engine(config, run_dir, resume=not new, resume_settings=restored_keys_set(overrides))
    show = not args.engine_child
    try:
        if show:
            with console.status(f"loading {config.dataset} and building {config.model}"):
                engine.setup()
        else:
            engine.setup()
    except CannotStart as error:  # no such device, no data set: the user's to fix, as a typo is
        print_error(error)
        return USER_ERROR
    if new:
        create_run_dir(run_dir, config)
    else:
        os.chmod(run_dir, 0o700)
        write_config(run_dir, config)

    def on_ready(path: Path) -> None:
        if args.engine_child:
            print(f"{READY}{path}", flush=True)
            become_detached_log(path)
        else:
            console.print(
                f"[bold]{config.name}[/bold] — {engine.method_label}, {config.model} on {config.dataset} "
                f"→ {path}  (attach: rlr-tui --attach {path})",
                highlight=False,
            )

    try:
        snap, signal_code = serve_run(
            engine, detached=args.engine_child, follow=lambda e: watch(e, config.name, show=show), on_ready=on_ready
        )
    except CannotStart as error:
        if new:
            discard_run_dir(run_dir)  # it never trained: nothing in it to resume or inspect
        print_error(error)
        return USER_ERROR
    try:
        if snap.state == "failed":
            print_error(snap.message)
            return 1
        if show:
            print_summary(snap)
        if snap.state == "stopped":
            console.print(f"stopped at step {snap.step}; resume with: rlr train --resume {run_dir}")
            return signal_code or 0
    except OSError:
        pass  # the terminal is gone
    return 0


def start_detached_run(args: argparse.Namespace) -> int:
    # Check what can be checked here, so a typo is reported before a process starts.
    prepare_run(args.preset, args.set, args.resume, args.runs, args.device)
    try:
        with console.status("starting the engine (loading the data set)"):
            run_dir, pid = start_detached(train_arguments(args))
    except LaunchError as error:
        raise UserError(str(error)) from None
    console.print(f"engine running in the background (pid {pid}), run directory {run_dir}", highlight=False)
    root = Path(run_dir).parent
    listing = "rlr runs" if root.resolve() == Path(DEFAULT_RUNS).resolve() else f"rlr runs --runs {root}"
    console.print(
        f"attach: rlr-tui --attach {run_dir}\nlist:   {listing}\nstop:   kill {pid}  (a final checkpoint is written)",
        highlight=False,
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a preset with a progress display")
    p.add_argument("preset", nargs="?", help="preset name (see `rlr presets`) or path of a .toml file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. --set tau=0.5 --set epochs=3 (repeatable)",
    )
    p.add_argument("--device", choices=DEVICES, help="where to train (default: the preset's)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory")
    p.add_argument(
        "--runs", default=DEFAULT_RUNS, metavar="DIR", help=f"where run directories go (default: {DEFAULT_RUNS})"
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background (no terminal; survives logout) and print how to attach",
    )
    p.add_argument(ENGINE_CHILD_FLAG, dest="engine_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files into RUN_DIR/tensorboard/ (= --set tensorboard=true)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes started through torchrun (one GPU each on CUDA; default 1)",
    )
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # the fresh run directory the --nproc launcher made
    p.set_defaults(func=cmd_train)
