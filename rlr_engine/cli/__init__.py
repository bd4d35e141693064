"""``rlr``: the headless command line (list presets, train, evaluate, compare)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.table import Table

from rlr_engine.control.detached import ENGINE_CHILD_FLAG, READY
from rlr_engine.core.catalog import DEVICES
from rlr_engine.control.run_files import DEFAULT_RUNS
from rlr_engine.core.presets import PresetError, available_presets, load_preset, restored_keys_set, resume_config
from rlr_engine.core.validation import parse_eps_text
from rlr_engine.cli.console import UserError, console, err_console, fmt_pct as _fmt_pct, print_error, watch


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
    from rlr_engine.control.run_files import CHECKPOINT, CONTROL_SOCKET
    from rlr_engine.control.run_dirs import choose_run_dir, engine_alive, read_run_config
    from rlr_engine.control.unix_socket import socket_path_problem

    extra = list(overrides) + ([f"device={device}"] if device else [])
    if resume:
        run_dir = Path(resume)
        config = resume_config(read_run_config(run_dir), extra)
        if engine_alive(run_dir):
            raise UserError(f"--resume {run_dir}: the run is still running; attach with: rlr-tui --attach {run_dir}")
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume {run_dir}: no {CHECKPOINT} in that directory, nothing to resume")
        require_extras(config)  # a missing optional extra is reported before anything changes
        problem = socket_path_problem(run_dir / CONTROL_SOCKET)
        if problem:
            raise UserError(f"--resume {run_dir}: {problem}; move the run directory to a shorter path")
        return config, run_dir, False
    if preset is None:
        raise UserError("give a preset name or file, or --resume RUN_DIR (see `rlr presets`)")
    config = load_preset(preset, extra)
    require_extras(config)
    run_dir = choose_run_dir(config, runs_root)
    problem = socket_path_problem(run_dir / CONTROL_SOCKET)
    if problem:
        raise UserError(f"--runs {runs_root}: {problem}; choose a shorter directory for runs")
    return config, run_dir, True


def require_extras(config) -> None:
    """UserError when the run needs an optional package that is not installed: checked before
    the run starts, not when its first attack is due."""
    from rlr_engine.workload.attacks import AttackUnavailable, check_available
    from rlr_engine.run.tensorboard_log import require_tensorboard

    require_tensorboard(config)
    try:
        check_available(config.attack)
    except AttackUnavailable as error:
        raise UserError(f"attack = {config.attack!r}: {error}") from None


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
    from rlr_engine.run.engine import Engine
    from rlr_engine.core.errors import CannotStart
    from rlr_engine.run.host import become_detached_log, serve_run
    from rlr_engine.control.run_dirs import create_run_dir, discard_run_dir, write_config

    # -- torch.distributed: a torchrun worker, or the launcher of --nproc N workers --
    from rlr_engine.run.distributed import launched_by_torchrun

    if launched_by_torchrun():
        from rlr_engine.run.data_parallel import train_worker

        return train_worker(args)
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: must be >= 1 (processes to train on, one per GPU on CUDA)")
    if args.nproc > 1:
        from rlr_engine.run.data_parallel import launch

        return launch(args)
    if args.run_dir:
        raise UserError("--run-dir is set by the --nproc launcher for its workers; use --resume RUN_DIR")
    # -- end torch.distributed --
    overrides = args.set
    config, run_dir, new = prepare_run(args.preset, overrides, args.resume, args.runs, args.device)
    engine = Engine(config, run_dir, resume=not new, resume_settings=restored_keys_set(overrides))
    show = not args.engine_child
    try:
        if show:
            with console.status(f"loading {config.dataset} and building {config.model}"):
                engine.setup()
        else:
            engine.setup()
    except CannotStart as error:
        print_error(error)
        return 1
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
            console.print(f"[bold]{config.name}[/bold] — {engine.method_label}, {config.model} on {config.dataset} "
                          f"→ {path}  (attach: rlr-tui --attach {path})", highlight=False)

    try:
        snap, signal_code = serve_run(engine, detached=args.engine_child,
                                      follow=lambda e: watch(e, config.name, show=show), on_ready=on_ready)
    except CannotStart as error:
        if new:
            discard_run_dir(run_dir)  # it never trained: nothing in it to resume or inspect
        print_error(error)
        return 1
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
    from rlr_engine.control.detached import LaunchError, start_detached

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
    console.print(f"attach: rlr-tui --attach {run_dir}\nlist:   {listing}\nstop:   kill {pid}  "
                  f"(a final checkpoint is written)", highlight=False)
    return 0


# -- rlr runs -------------------------------------------------------------------------------
STATE_STYLES = {"running": "green", "paused": "yellow", "starting": "", "stopped": "yellow", "finished": "cyan",
                "failed": "red", "dead": "bold red"}


def cmd_runs(args: argparse.Namespace) -> int:

    from rlr_engine.control.run_dirs import list_runs

    # By default what can be attached to or resumed (as the dashboard's picker lists them).
    runs = [r for r in list_runs(args.root) if args.all or r.live or r.resumable]
    if not runs:
        console.print(f"no {'' if args.all else 'live or resumable '}runs under {args.root}"
                      f"{'' if args.all else ' (--all lists finished, failed and unresumable ones too)'}")
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
        details = [r.config.name, f"step {step}", f"τ {'–' if r.tau is None else f'{r.tau:g}'}",
                   f"checkpoint {'–' if r.last_checkpoint_step is None else r.last_checkpoint_step}"]
        if r.pid and r.live:
            details.append(f"pid {r.pid}")
        table.add_row(r.path.name, f"[{STATE_STYLES.get(r.state, '')}]{r.state}[/]", " · ".join(details))
    console.print(table)
    return 0


def print_summary(snap) -> None:
    """Clean and adversarial accuracy per ε, ranks, κ and compression of a finished run."""
    result = snap.adversarial
    if result is not None:
        # Headings are lines of their own (a table title wraps at the table's width and would
        # break the preset's name); the attack says when it ran, since the model is later.
        console.print(f"[bold]{snap.preset}[/bold]: accuracy under {result.attack} at step {result.step}"
                      f"{'' if result.step == snap.step else f' (the model is at step {snap.step})'}",
                      highlight=False)
        table = Table()
        table.add_column("ε", justify="right")
        table.add_column("accuracy", justify="right")
        for eps, acc in zip(result.eps, result.accuracy):
            table.add_row(f"{eps:g}", _fmt_pct(acc))
        console.print(table)
    console.print(f"layers — {snap.params:,} parameters, {snap.compression:.1%} fewer than dense, "
                  f"{snap.rank_fraction:.0%} of the rank kept", highlight=False)
    layers = Table()
    for column in ("layer", "shape", "rank", "κ", "σ_max"):
        layers.add_column(column, justify="right" if column != "layer" else "left")
    for s in snap.layers:
        layers.add_row(s.name, f"{s.shape[0]}×{s.shape[1]}", f"{s.rank}/{s.full_rank}",
                       f"{s.kappa:.3g}", f"{s.sigma_max:.3g}")
    console.print(layers)
    console.print(f"validation accuracy {_fmt_pct(snap.val_acc)}, test accuracy {_fmt_pct(snap.test_acc)}, "
                  f"{snap.step} steps; run directory {snap.run_dir}")


# -- rlr eval -------------------------------------------------------------------------------
def _eval_spec(args: argparse.Namespace):
    """The attack the user asked for, checked before anything is loaded (the stored run fills
    what is left out later)."""
    from rlr_engine.workload.attacks import ATTACKS, AttackSpec, check_available

    info = ATTACKS[args.attack]
    if args.steps is not None and not info.uses_steps:
        raise UserError(f"--steps {args.steps}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    if args.step_size and not info.uses_steps:
        raise UserError(f"--step-size {args.step_size}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    samples = info.default_samples if args.samples is None else args.samples
    if samples < 0:
        raise UserError(f"--samples {samples}: must be >= 0 (0: the whole test set)")
    try:
        AttackSpec(args.attack, tuple(args.eps) if args.eps else (0.0,), 1 if args.steps is None else args.steps,
                   args.step_size, args.restarts)
        check_available(args.attack)
    except ValueError as error:
        raise UserError(str(error)) from None
    return samples


def _names_with(flag: str) -> str:
    from rlr_engine.workload.attacks import ATTACKS

    return ", ".join(name for name, info in ATTACKS.items() if getattr(info, flag))


def eval_json(config, step: int, checked) -> dict:
    """What ``rlr eval --json`` prints: one object, accuracies as fractions in [0, 1]."""
    result = checked.result
    spec = result.spec
    return {
        "preset": config.name, "dataset": config.dataset, "step": step,
        "attack": spec.name, "norm": spec.info.norm, "eps": list(spec.eps), "accuracy": list(result.accuracy),
        "samples": result.samples, "steps": spec.steps if spec.info.uses_steps else None,
        "restarts": spec.restarts,
        "parts": [p.to_dict() for p in result.parts],
        "probes": [p.to_dict() for p in checked.probes],
        **checked.sanity.to_dict(),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlr_engine.workload.attacks import robustness_with_checks, work_units
    from rlr_engine.workload.data import to_float
    from rlr_engine.run.saved_model import load_evaluation_target

    samples = _eval_spec(args)
    config, step, model, images, labels = load_evaluation_target(args.checkpoint, samples, args.device or "auto",
                                                                 args.data_dir)
    try:  # what the run fills in (its eps, its PGD steps) is checked against the chosen attack too
        spec = dataclasses.replace(config.attack_spec(args.attack, args.eps, args.steps, args.step_size),
                                   restarts=args.restarts)
    except ValueError as error:
        hint = "" if args.eps else f" (the run's budgets: give --eps for {args.attack})"
        raise UserError(f"{error}{hint}") from None
    n = len(labels)
    shown = err_console if args.json else console
    shown.print(f"{config.name} (step {step}): {spec.name} on {n} test images"
                f"{'' if samples else ' (the whole test set)'}", highlight=False)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=shown, transient=True) as progress:
        task = progress.add_task(f"{spec.name}, images × ε", total=work_units(spec, config.dataset, n,
                                                                              not args.no_probes))
        checked = robustness_with_checks(model, images, labels, spec, config.dataset, probes=not args.no_probes,
                                         to_input=to_float, progress=lambda k: progress.advance(task, k))
    if args.json:
        print(json.dumps(eval_json(config, step, checked)))
        return 0
    # The heading is a line of its own, not the table's title: a title wraps at the table's narrow
    # width and would break the run's name.
    console.print(f"[bold]{config.name}[/bold] (step {step}): accuracy under {spec.name}, {n} test images",
                  highlight=False)
    table = Table()
    table.add_column("ε" + (" (L2)" if spec.info.norm == "l2" else ""), justify="right")
    table.add_column("accuracy", justify="right")
    for part in checked.result.parts:
        table.add_column(f"after {part.attack}", justify="right")
    for i, eps in enumerate(spec.eps):
        table.add_row(f"{eps:g}", _fmt_pct(checked.result.accuracy[i]),
                      *[_fmt_pct(part.accuracy[i]) for part in checked.result.parts])
    console.print(table)
    for probe in checked.probes:
        pairs = ", ".join(f"ε={e:g}: {a:.1%}" for e, a in zip(probe.spec.eps, probe.accuracy))
        console.print(f"[dim]probe for the checks: {probe.spec.name} {pairs}[/dim]", highlight=False)
    for line in checked.sanity.lines():
        console.print(f"[yellow]{line}[/yellow]" if line.startswith("⚠") else f"[dim]{line}[/dim]", highlight=False)
    return 0


# -- argument parsing -----------------------------------------------------------------------
def _eps_list(text: str) -> list[float]:
    try:
        return list(parse_eps_text(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--eps {text!r}: {error}") from None


def add_eval_parser(sub) -> None:
    from rlr_engine.workload.attacks import ATTACKS

    slow = ", ".join(f"{name} {info.default_samples}" for name, info in ATTACKS.items() if info.default_samples)
    p = sub.add_parser("eval", help="robustness table of a saved checkpoint, with sanity checks",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="attacks:\n" + "\n".join(f"  {name:11} {info.summary}"
                                                             for name, info in ATTACKS.items()))
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--attack", choices=tuple(ATTACKS), default="fgsm")
    p.add_argument("--eps", type=_eps_list, help="comma-separated budgets (default: the run's); L2 budgets for "
                                                 "pgd-l2 and cw-l2")
    p.add_argument("--steps", type=int, help="PGD iterations (default: the run's pgd_steps)")
    p.add_argument("--step-size", type=float, default=0.0, help="PGD step (default 2.5·ε/steps)")
    p.add_argument("--restarts", type=int, default=1, help="PGD random starts; an image counts as robust only if "
                                                           "it survives all (default 1)")
    p.add_argument("--samples", type=int, help=f"attack a seeded subset of the test set (0: all; default all, "
                                               f"except {slow})")
    p.add_argument("--no-probes", action="store_true",
                   help="skip the extra measurements the sanity checks use (FGSM/PGD references, large ε)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--data-dir", help="where the data set is (default: the run's)")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlr", description="Robust low-rank training (CondLR), headless.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="list the available presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a preset with a progress display")
    p.add_argument("preset", nargs="?", help="preset name (see `rlr presets`) or path of a .toml file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset key, e.g. --set tau=0.5 --set epochs=3 (repeatable)")
    p.add_argument("--device", choices=DEVICES, help="where to train (default: the preset's)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory")
    p.add_argument("--runs", default=DEFAULT_RUNS, metavar="DIR",
                   help=f"where run directories go (default: {DEFAULT_RUNS})")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (no terminal; survives logout) and print how to attach")
    p.add_argument(ENGINE_CHILD_FLAG, dest="engine_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into RUN_DIR/tensorboard/ (= --set tensorboard=true)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes started through torchrun (one GPU each on CUDA; default 1)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # the fresh run directory the --nproc launcher made
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", help="list runs: running, paused, and stopped or dead ones with a checkpoint "
                                    "(--all: every run)")
    p.add_argument("--all", action="store_true", help="also list finished and failed runs, and runs without a "
                                                      "checkpoint")
    # --root: the flag's name before it matched train's and rlr-tui's --runs
    p.add_argument("--runs", "--root", dest="root", default=DEFAULT_RUNS, metavar="DIR",
                   help=f"where run directories are (default: {DEFAULT_RUNS})")
    p.set_defaults(func=cmd_runs)

    add_eval_parser(sub)

    from rlr_engine.run.comparison import add_compare_parser

    add_compare_parser(sub)

    from rlr_engine.cli.export import add_export_parser

    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rlr_engine.run.checkpoint import CheckpointError
    from rlr_engine.run.comparison import RunFailed
    from rlr_engine.core.errors import CannotStart
    from rlr_engine.control.run_dirs import RunBusy

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, PresetError, CheckpointError, CannotStart, RunBusy, RunFailed) as error:
        print_error(error)
        return 2
    except KeyboardInterrupt:  # Ctrl+C where no run is there to stop cleanly (loading, rlr eval)
        print_error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of stdout left (rlr export --csv - | head): end quietly. Python would report
        # the pipe again when it flushes stdout at exit; its documentation advises this redirect.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

