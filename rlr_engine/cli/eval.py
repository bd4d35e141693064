"""``rlr eval RUN``: the robustness table of a saved checkpoint under one attack, with the
sanity checks and their probes."""

from __future__ import annotations

import argparse
import dataclasses
import json

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rlr_engine.cli.console import console, err_console, fmt_pct, print_warning
from rlr_engine.control.run_dirs import find_checkpoint
from rlr_engine.core.catalog import ATTACKS, DATASETS, DEVICES, data_source
from rlr_engine.core.config import SEED_RANGE, AttackSpec
from rlr_engine.core.errors import UserError
from rlr_engine.core.extras import require_attack
from rlr_engine.core.validation import parse_eps_text

DEFAULT_SEED = 0


def _eval_spec(args: argparse.Namespace):
    """The attack the user asked for, checked before anything is loaded (the stored run fills
    what is left out later)."""
    info = ATTACKS[args.attack]
    if args.steps is not None and not info.uses_steps:
        raise UserError(f"--steps {args.steps}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    if args.step_size and not info.uses_steps:
        raise UserError(f"--step-size {args.step_size}: applies to {_names_with('uses_steps')}, not to {args.attack}")
    samples = info.default_samples if args.samples is None else args.samples
    if samples < 0:
        raise UserError(f"--samples {samples}: must be >= 0 (0: the whole test set)")
    if args.seed not in SEED_RANGE:
        raise UserError(f"--seed {args.seed}: must be {SEED_RANGE.allowed('an integer')}")
    try:
        AttackSpec(
            args.attack,
            tuple(args.eps) if args.eps else (0.0,),
            1 if args.steps is None else args.steps,
            args.step_size,
            args.restarts,
        )
        require_attack(args.attack)
    except ValueError as error:
        raise UserError(str(error)) from None
    return samples


def _names_with(flag: str) -> str:
    return ", ".join(name for name, info in ATTACKS.items() if getattr(info, flag))


def eval_json(config, step: int, checked) -> dict:
    """What ``rlr eval --json`` prints: one object, accuracies as fractions in [0, 1]."""
    result = checked.result
    spec = result.spec
    return {
        "preset": config.name,
        "dataset": config.dataset,
        "step": step,
        "attack": spec.name,
        "norm": spec.info.norm,
        "eps": list(spec.eps),
        "accuracy": list(result.accuracy),
        "samples": result.samples,
        "steps": spec.steps if spec.info.uses_steps else None,
        "restarts": spec.restarts,
        "seed": result.seed,
        "parts": [p.to_dict() for p in result.parts],
        "probes": [p.to_dict() for p in checked.probes],
        **checked.sanity.to_dict(),
    }


def _data_dir_unused(dataset: str) -> str | None:
    """Why ``dataset`` reads nothing from data_dir (None when it does)."""
    source = data_source(dataset)
    if source is None or source.reads_data_dir:
        return None
    if source.in_catalog:
        return f"is {DATASETS[dataset].source} data held in memory, not read from files"
    return f"is read from {source.target}"


def cmd_eval(args: argparse.Namespace) -> int:
    samples = _eval_spec(args)  # before torch loads: a mistake is one line at once
    find_checkpoint(args.checkpoint)
    from rlr_engine.run.saved_model import load_evaluation_target
    from rlr_engine.workload.attacks import PART_LABELS, robustness_with_checks, work_units
    from rlr_engine.workload.data import to_float

    config, step, model, images, labels = load_evaluation_target(
        args.checkpoint, samples, args.device or "auto", args.data_dir
    )
    unused = _data_dir_unused(config.dataset)
    if args.data_dir and unused:
        print_warning(f"--data-dir {args.data_dir} is not used: the checkpoint's data set {config.dataset} {unused}")
    try:  # what the run fills in (its eps, its PGD steps) is checked against the chosen attack too
        spec = dataclasses.replace(
            config.attack_spec(args.attack, args.eps, args.steps, args.step_size), restarts=args.restarts
        )
    except ValueError as error:
        hint = "" if args.eps else f" (the run's budgets: give --eps for {args.attack})"
        raise UserError(f"{error}{hint}") from None
    n = len(labels)
    shown = err_console if args.json else console
    shown.print(
        f"{config.name} (step {step}): {spec.name} on {n} test images{'' if samples else ' (the whole test set)'}, "
        f"seed {args.seed}",
        highlight=False,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=shown,
        transient=True,
    ) as progress:
        task = progress.add_task(
            f"{spec.name}, images × ε", total=work_units(spec, config.dataset, n, not args.no_probes)
        )
        part_task: TaskID | None = None

        def on_part(part: str, eps: float, done: int, total: int) -> None:
            """A line of its own for the part running now (AutoAttack's four, Square): images done."""
            nonlocal part_task
            label = f"  {PART_LABELS[part]} at ε={eps:g}"
            if part_task is None:
                part_task = progress.add_task(label, total=total)
            progress.update(part_task, description=label, completed=done, total=total)

        checked = robustness_with_checks(
            model,
            images,
            labels,
            spec,
            config.dataset,
            probes=not args.no_probes,
            to_input=to_float,
            progress=lambda k: progress.advance(task, k),
            seed=args.seed,
            part_progress=on_part,
        )
    if args.json:
        print(json.dumps(eval_json(config, step, checked)))
        return 0
    # The heading is a line of its own, not the table's title: a title wraps at the table's narrow
    # width and would break the run's name.
    console.print(
        f"[bold]{config.name}[/bold] (step {step}): accuracy under {spec.name}, {n} test images, seed {args.seed}",
        highlight=False,
    )
    table = Table()
    table.add_column("ε" + (" (L2)" if spec.info.norm == "l2" else ""), justify="right")
    table.add_column("accuracy", justify="right")
    for part in checked.result.parts:
        table.add_column(f"after {part.attack}", justify="right")
    for i, eps in enumerate(spec.eps):
        table.add_row(
            f"{eps:g}",
            fmt_pct(checked.result.accuracy[i]),
            *[fmt_pct(part.accuracy[i]) for part in checked.result.parts],
        )
    console.print(table)
    for probe in checked.probes:
        pairs = ", ".join(f"ε={e:g}: {a:.1%}" for e, a in zip(probe.spec.eps, probe.accuracy))
        console.print(f"[dim]probe for the checks: {probe.spec.name} {pairs}[/dim]", highlight=False)
    for line in checked.sanity.lines():
        console.print(f"[yellow]{line}[/yellow]" if line.startswith("⚠") else f"[dim]{line}[/dim]", highlight=False)
    return 0


def _eps_list(text: str) -> list[float]:
    try:
        return list(parse_eps_text(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--eps {text!r}: {error}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    slow = ", ".join(f"{name} {info.default_samples}" for name, info in ATTACKS.items() if info.default_samples)
    p = sub.add_parser(
        "eval",
        help="robustness table of a saved checkpoint, with sanity checks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="attacks:\n" + "\n".join(f"  {name:11} {info.summary}" for name, info in ATTACKS.items()),
    )
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--attack", choices=tuple(ATTACKS), default="fgsm")
    p.add_argument(
        "--eps", type=_eps_list, help="comma-separated budgets (default: the run's); L2 budgets for pgd-l2 and cw-l2"
    )
    p.add_argument("--steps", type=int, help="PGD iterations (default: the run's pgd_steps)")
    p.add_argument("--step-size", type=float, default=0.0, help="PGD step (default 2.5·ε/steps)")
    p.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="PGD random starts; an image counts as robust only if it survives all (default 1)",
    )
    p.add_argument(
        "--samples", type=int, help=f"attack a seeded subset of the test set (0: all; default all, except {slow})"
    )
    p.add_argument(
        "--no-probes",
        action="store_true",
        help="skip the extra measurements the sanity checks use (FGSM/PGD references, large ε)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"where the random starts (PGD, AutoAttack, Square) begin: the same seed, the same numbers "
        f"(default {DEFAULT_SEED})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--data-dir", help="where the data set is (default: the run's)")
    p.set_defaults(func=cmd_eval)
