"""``rlr``: the headless command line (list presets, train, evaluate, compare)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.table import Table

from .launch import ENGINE_CHILD_FLAG, READY
from .presets import PresetError, apply_overrides, available_presets, load_preset
from .progress import UserError, console, err_console, fmt_pct as _fmt_pct, watch


# -- rlr presets ----------------------------------------------------------------------------
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
        table.add_row(f"[bold]{name}[/bold]", f"{c.dataset} · {c.model} · {c.method_label} · rank {kept}"
                                                f"\n[dim]{c.description}[/dim]")
    console.print(table)
    return 0


# -- rlr train ------------------------------------------------------------------------------
def prepare_run(preset: str | None, overrides: Sequence[str], resume: str | None, runs_root: str,
                device: str | None):
    """The config and run directory of a new or resumed run, checked; nothing is created yet.
    Returns (config, run_dir, whether the run directory is new)."""
    from .runfiles import CHECKPOINT
    from .runs import choose_run_dir, engine_alive, read_run_config
    from .tensorboard_log import require_tensorboard

    extra = list(overrides) + ([f"device={device}"] if device else [])
    if resume:
        run_dir = Path(resume)
        config = apply_overrides(read_run_config(run_dir), extra)
        if engine_alive(run_dir):
            raise UserError(f"--resume {run_dir}: the run is still running; attach with: rlr-tui --attach {run_dir}")
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume {run_dir}: no {CHECKPOINT} in that directory, nothing to resume")
        require_tensorboard(config)  # a missing optional extra is reported before anything changes
        return config, run_dir, False
    if preset is None:
        raise UserError("give a preset name or file, or --resume RUN_DIR (see `rlr presets`)")
    config = load_preset(preset, extra)
    require_tensorboard(config)
    return config, choose_run_dir(config, runs_root), True


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
    return argv + ["--runs", args.runs]


def cmd_train(args: argparse.Namespace) -> int:
    if args.detach and args.nproc > 1:
        raise UserError(f"--detach with --nproc {args.nproc}: not supported yet; start the run inside tmux "
                        f"or with nohup, then attach with rlr-tui --attach RUN_DIR")
    if args.detach and not args.engine_child:
        return start_detached_run(args)
    from .data import DatasetUnavailable
    from .engine import Engine
    from .process import become_detached_log, serve_run
    from .runfiles import CONFIG
    from .presets import dump_toml
    from .runs import create_run_dir

    # -- torch.distributed: a torchrun worker, or the launcher of --nproc N workers --
    from .distributed import launched_by_torchrun

    if launched_by_torchrun():
        from .distributed_launch import train_worker

        return train_worker(args)
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: must be >= 1 (processes to train on, one per GPU on CUDA)")
    if args.nproc > 1:
        from .distributed_launch import launch

        return launch(args)
    if args.run_dir:
        raise UserError("--run-dir is set by the --nproc launcher for its workers; use --resume RUN_DIR")
    # -- end torch.distributed --
    overrides = args.set + (["tensorboard=true"] if args.tensorboard else [])
    config, run_dir, new = prepare_run(args.preset, overrides, args.resume, args.runs, args.device)
    engine = Engine(config, run_dir, resume=not new)
    show = not args.engine_child
    try:
        if show:
            with console.status(f"loading {config.dataset} and building {config.model}"):
                engine.setup()
        else:
            engine.setup()
    except DatasetUnavailable as error:
        err_console.print(f"[red]error:[/red] {error}", highlight=False)
        return 1
    if new:
        create_run_dir(run_dir, config)
    else:
        os.chmod(run_dir, 0o700)
        (run_dir / CONFIG).write_text(dump_toml(config), encoding="utf-8")

    def on_ready(path: Path) -> None:
        if args.engine_child:
            print(f"{READY}{path}", flush=True)
            become_detached_log(path)
        else:
            console.print(f"[bold]{config.name}[/bold] — {config.method_label}, {config.model} on {config.dataset} "
                          f"→ {path}  (attach: rlr-tui --attach {path})", highlight=False)

    snap, signal_code = serve_run(engine, detached=args.engine_child,
                                  follow=lambda e: watch(e, config.name, show=show), on_ready=on_ready)
    try:
        if snap.state == "failed":
            err_console.print(f"[red]error:[/red] {snap.message}", highlight=False)
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
    from .launch import LaunchError, start_detached

    # Check what can be checked here, so a typo is reported before a process starts.
    prepare_run(args.preset, args.set, args.resume, args.runs, args.device)
    try:
        with console.status("starting the engine (loading the data set)"):
            run_dir, pid = start_detached(train_arguments(args))
    except LaunchError as error:
        raise UserError(str(error)) from None
    console.print(f"engine running in the background (pid {pid}), run directory {run_dir}", highlight=False)
    console.print(f"attach: rlr-tui --attach {run_dir}\nlist:   rlr runs\nstop:   kill {pid}  "
                  f"(a final checkpoint is written)", highlight=False)
    return 0


# -- rlr runs -------------------------------------------------------------------------------
STATE_STYLES = {"running": "green", "paused": "yellow", "starting": "", "stopped": "yellow", "finished": "cyan",
                "failed": "red", "dead": "bold red"}


def cmd_runs(args: argparse.Namespace) -> int:
    from rich import box

    from .runs import list_runs

    runs = [r for r in list_runs(args.root) if args.all or r.state not in ("finished", "failed")]
    if not runs:
        console.print(f"no {'' if args.all else 'live or resumable '}runs under {args.root}"
                      f"{'' if args.all else ' (--all lists finished and failed ones too)'}")
        return 0
    table = Table(title=f"runs under {args.root}", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("run", "state", "preset", "step", "τ", "checkpoint", "pid"):
        table.add_column(column, justify="right" if column in ("step", "τ", "checkpoint", "pid") else "left",
                         no_wrap=column != "run", overflow="fold")
    for r in runs:
        step = "–" if r.step is None else f"{r.step}/{r.total_steps if r.total_steps else '?'}"
        table.add_row(r.path.name, f"[{STATE_STYLES.get(r.state, '')}]{r.state}[/]", r.config.name, step,
                      "–" if r.tau is None else f"{r.tau:g}",
                      "–" if r.last_checkpoint_step is None else str(r.last_checkpoint_step),
                      str(r.pid) if r.pid and r.live else "–")
    console.print(table)
    return 0


def print_summary(snap) -> None:
    """Clean and adversarial accuracy per ε, ranks, κ and compression of a finished run."""
    result = snap.adversarial
    if result is not None:
        table = Table(title=f"{snap.preset}: accuracy under {result.attack}")
        table.add_column("ε", justify="right")
        table.add_column("accuracy", justify="right")
        for eps, acc in zip(result.eps, result.accuracy):
            table.add_row(f"{eps:g}", _fmt_pct(acc))
        console.print(table)
    layers = Table(title=f"layers — {snap.params:,} parameters, {snap.compression:.1%} fewer than dense, "
                         f"{snap.rank_fraction:.0%} of the rank kept")
    for column in ("layer", "shape", "rank", "κ", "σ_max"):
        layers.add_column(column, justify="right" if column != "layer" else "left")
    for s in snap.layers:
        layers.add_row(s.name, f"{s.shape[0]}×{s.shape[1]}", f"{s.rank}/{s.full_rank}",
                       f"{s.kappa:.3g}", f"{s.sigma_max:.3g}")
    console.print(layers)
    console.print(f"validation accuracy {_fmt_pct(snap.val_acc)}, test accuracy {_fmt_pct(snap.test_acc)}, "
                  f"{snap.step} steps; run directory {snap.run_dir}")


# -- rlr eval -------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .attacks import AttackSpec
    from .evaluation import evaluate_checkpoint

    if args.samples < 0:
        raise UserError(f"--samples {args.samples}: must be >= 0 (0: the whole test set)")
    try:  # check the attack settings before anything is loaded
        AttackSpec(args.attack, tuple(args.eps) if args.eps else (0.0,), args.steps, args.step_size)
    except ValueError as error:
        raise UserError(str(error)) from None
    with console.status(f"{args.attack} on the test set"):
        config, step, spec, accuracy, n = evaluate_checkpoint(
            args.checkpoint, args.attack, args.eps, args.steps, args.step_size, args.samples,
            args.device or "auto", args.data_dir)
    table = Table(title=f"{config.name} (step {step}): accuracy under {spec.name}, {n} test images")
    table.add_column("ε", justify="right")
    table.add_column("accuracy", justify="right")
    for eps in spec.eps:
        table.add_row(f"{eps:g}", _fmt_pct(accuracy[eps]))
    console.print(table)
    return 0


# -- argument parsing -----------------------------------------------------------------------
def _eps_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eps {text!r}: expected numbers like 0,0.01,0.02") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--eps {text!r}: values must be in [0, 1]")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlr", description="Robust low-rank training (CondLR), headless.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="list the available presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset with a progress display")
    p.add_argument("preset", nargs="?", help="preset name (see `rlr presets`) or path of a .toml file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key, e.g. --set tau=0.5 --set epochs=3 (repeatable)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: the preset's)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory")
    p.add_argument("--runs", default="runs", metavar="DIR", help="where run directories go (default: runs)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (no terminal; survives logout) and print how to attach")
    p.add_argument(ENGINE_CHILD_FLAG, dest="engine_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into RUN_DIR/tensorboard/ (= --set tensorboard=true)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes started through torchrun (one GPU each on CUDA; default 1)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # the fresh run directory the --nproc launcher made
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="list runs: running, paused, stopped, dead (--all: finished, failed too)")
    p.add_argument("--all", action="store_true", help="also list finished and failed runs")
    p.add_argument("--root", default="runs", metavar="DIR", help="where run directories are (default: runs)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("eval", help="robustness table of a saved checkpoint")
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--attack", choices=("fgsm", "pgd-linf", "pgd-l2"), default="fgsm")
    p.add_argument("--eps", type=_eps_list, help="comma-separated budgets (default: the run's)")
    p.add_argument("--steps", type=int, default=10, help="PGD iterations (default 10)")
    p.add_argument("--step-size", type=float, default=0.0, help="PGD step (default 2.5·ε/steps)")
    p.add_argument("--samples", type=int, default=0, help="attack a seeded subset of the test set (0: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data-dir", help="where the data set is (default: the run's)")
    p.set_defaults(func=cmd_eval)

    from .compare import add_compare_parser

    add_compare_parser(sub)

    from .export import add_export_parser

    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetUnavailable
    from .runs import RunBusy

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, PresetError, CheckpointError, DatasetUnavailable, RunBusy) as error:
        from rich.markup import escape  # messages hold brackets: pip install 'rlr[tensorboard]'

        err_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
