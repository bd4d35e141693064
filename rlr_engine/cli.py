"""``rlr``: the headless command line (list presets, train, evaluate, compare)."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .presets import PresetError, apply_overrides, available_presets, load_preset

console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


# -- rlr presets ----------------------------------------------------------------------------
def cmd_presets(args: argparse.Namespace) -> int:
    from rich import box

    table = Table(title="rlr presets (rlr train NAME)", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name / what it is for", overflow="fold", ratio=1)
    for column in ("data set", "model", "method", "rank kept"):
        table.add_column(column, no_wrap=True)
    for name, path in available_presets().items():
        try:
            c = load_preset(str(path))
        except PresetError as error:
            table.add_row(f"[bold]{name}[/bold]\n[red]{error}[/red]", "", "", "invalid", "")
            continue
        table.add_row(f"[bold]{name}[/bold]\n[dim]{c.description}[/dim]", c.dataset, c.model, c.method_label,
                      f"{c.rank_fraction:.0%}" if c.is_low_rank else "100%")
    console.print(table)
    return 0


# -- rlr train ------------------------------------------------------------------------------
def prepare_run(preset: str | None, overrides: Sequence[str], resume: str | None, runs_root: str,
                device: str | None):
    """Resolve the config and run directory for a new or resumed run."""
    from .runs import CHECKPOINT, new_run_dir, read_run_config
    from .presets import dump_toml

    extra = list(overrides) + ([f"device={device}"] if device else [])
    if resume:
        run_dir = Path(resume)
        config = apply_overrides(read_run_config(run_dir), extra)
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume {run_dir}: no {CHECKPOINT} in that directory, nothing to resume")
        (run_dir / "config.toml").write_text(dump_toml(config), encoding="utf-8")
        return config, run_dir
    if preset is None:
        raise UserError("give a preset name or file, or --resume RUN_DIR (see `rlr presets`)")
    config = load_preset(preset, extra)
    return config, new_run_dir(config, runs_root)


def watch(engine, title: str) -> tuple[object, bool]:
    """Show a rich progress bar and the run's events until the engine ends. The first Ctrl+C
    asks for a clean stop (final checkpoint), a second one aborts. Returns (last snapshot,
    whether the user interrupted)."""
    from .records import Stop

    interrupted = False

    def on_interrupt(signum, frame):
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        console.print("[yellow]stopping: writing a final checkpoint (Ctrl+C again to abort)[/yellow]")
        engine.send(Stop())

    previous = signal.signal(signal.SIGINT, on_interrupt)
    last_event = 0
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task(title, total=None, info="")
            done = False
            while not done:
                done = engine.join(timeout=0.25)
                snap = engine.latest()
                for event in snap.events:
                    if event.seq > last_event and event.kind != "checkpoint":
                        progress.console.print(f"[dim]step {event.step}[/dim] {event.message}", highlight=False)
                last_event = snap.events[-1].seq if snap.events else last_event
                loss = "–" if snap.train_loss is None else f"{snap.train_loss:.3f}"
                progress.update(task, total=snap.total_steps or None, completed=snap.step,
                                description=f"{title} epoch {snap.epoch}/{snap.epochs}",
                                info=f"loss {loss}  acc {_fmt_pct(snap.train_acc)}  "
                                     f"{snap.samples_per_s:,.0f} samples/s")
    finally:
        signal.signal(signal.SIGINT, previous)
    return engine.latest(), interrupted


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import Engine

    config, run_dir = prepare_run(args.preset, args.set, args.resume, args.runs, args.device)
    engine = Engine(config, run_dir, resume=bool(args.resume)).start()
    console.print(f"[bold]{config.name}[/bold] — {config.method_label}, {config.model} on {config.dataset} "
                  f"→ {run_dir}", highlight=False)
    snap, interrupted = watch(engine, config.name)
    if snap.state == "failed":
        err_console.print(f"[red]error:[/red] {snap.message}", highlight=False)
        return 1
    print_summary(snap)
    if snap.state == "stopped":
        console.print(f"stopped at step {snap.step}; resume with: rlr train --resume {run_dir}")
        return 130 if interrupted else 0
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
def _eval_spec(args: argparse.Namespace):
    """The attack the user asked for, checked before anything is loaded (the stored run fills
    what is left out later)."""
    from .attacks import ATTACKS, AttackSpec, check_available

    info = ATTACKS[args.attack]
    if args.steps is not None and not info.uses_steps:
        raise UserError(f"--steps {args.steps}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    if args.step_size and not info.uses_steps:
        raise UserError(f"--step-size {args.step_size}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    samples = info.default_samples if args.samples is None else args.samples
    if samples < 0:
        raise UserError(f"--samples {samples}: must be >= 0 (0: the whole test set)")
    try:
        AttackSpec(args.attack, tuple(args.eps) if args.eps else (0.0,), args.steps or 1, args.step_size,
                   args.restarts)
        check_available(args.attack)
    except ValueError as error:
        raise UserError(str(error)) from None
    return samples


def _names_with(flag: str) -> str:
    from .attacks import ATTACKS

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
        "parts": [{"attack": p.attack, "kind": p.kind, "accuracy": list(p.accuracy)} for p in result.parts],
        "probes": [{"attack": p.spec.name, "eps": list(p.spec.eps), "accuracy": list(p.accuracy)}
                   for p in checked.probes],
        "flags": [{"code": f.code, "message": f.message} for f in checked.sanity.flags],
        "not_checked": list(checked.sanity.skipped),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from .attacks import robustness_with_checks, work_units
    from .data import to_float
    from .engine import load_evaluation_target

    samples = _eval_spec(args)
    config, step, model, images, labels = load_evaluation_target(args.checkpoint, samples, args.device or "auto",
                                                                 args.data_dir)
    spec = dataclasses.replace(config.attack_spec(args.attack, args.eps, args.steps, args.step_size),
                               restarts=args.restarts)
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
    table = Table(title=f"{config.name} (step {step}): accuracy under {spec.name}, {n} test images")
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
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eps {text!r}: expected numbers like 0,0.01,0.02") from None
    if not values or any(v < 0 or math.isnan(v) for v in values):
        raise argparse.ArgumentTypeError(f"--eps {text!r}: values must be >= 0 (L∞ budgets in [0, 1])")
    return values


def add_eval_parser(sub) -> None:
    from .attacks import ATTACKS

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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default: the preset's)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory")
    p.add_argument("--runs", default="runs", metavar="DIR", help="where run directories go (default: runs)")
    p.set_defaults(func=cmd_train)

    add_eval_parser(sub)

    from .compare import add_compare_parser

    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, PresetError, CheckpointError, DatasetUnavailable) as error:
        err_console.print(f"[red]error:[/red] {error}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
