"""``rlr compare``: train a set of presets over several seeds (reusing or resuming the runs a
comparison directory already holds), attack each, and tabulate them side by side
(run/comparison.py does the work; the layout of a comparison directory is described there)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlr_engine.cli.console import console, watch
from rlr_engine.control import comparison_files
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.catalog import ATTACKS, DEVICES
from rlr_engine.core.config import AttackSpec
from rlr_engine.core.errors import UserError
from rlr_engine.core.extras import ExtraUnavailable, require_attack
from rlr_engine.core.validation import parse_eps_text


def per_attack(values: Sequence[str], attacks: Sequence[str], flag: str, parse) -> tuple[Any, dict[str, Any]]:
    """``--flag VALUE`` (every attack) and ``--flag ATTACK=VALUE`` (one attack), repeatable:
    (the value for every attack or None, {attack: its own value}). ``parse`` turns the text into
    the value or raises ValueError with what is allowed."""
    default, own = None, {}
    for text in values:
        name, sep, value = text.partition("=")
        if sep and name.strip() not in attacks:
            raise UserError(
                f"{flag} {text!r}: {name.strip()!r} is not one of the attacks asked for ({', '.join(attacks)})"
            )
        try:
            parsed = parse(value if sep else text)
        except ValueError as error:
            raise UserError(f"{flag} {text!r}: {error}") from None
        if sep:
            own[name.strip()] = parsed
        else:
            default = parsed
    return default, own


def parse_samples(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError("must be an integer >= 0 (0: whole test set)")
    return int(text)


def cmd_compare(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be >= 1")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad or not attacks:
        raise UserError(f"--attacks {args.attacks!r}: choose from {', '.join(ATTACKS)}")
    try:
        for attack in attacks:
            require_attack(attack)
    except ExtraUnavailable as error:
        raise UserError(f"--attacks {args.attacks!r}: {error}") from None
    default_samples, own_samples = per_attack(args.attack_samples, attacks, "--attack-samples", parse_samples)
    every_attack_eps, own_eps = per_attack(args.attack_eps, attacks, "--attack-eps", parse_eps_text)
    if every_attack_eps is not None:
        raise UserError(
            f"--attack-eps {args.attack_eps[0]!r}: name the attack (ATTACK=E1,E2); the presets' "
            f"eps list is every other attack's"
        )
    for attack, eps in own_eps.items():
        try:
            AttackSpec(attack, eps)
        except ValueError as error:
            raise UserError(f"--attack-eps {attack}={','.join(map(str, eps))}: {error}") from None
    from rlr_engine.run.comparison import (
        RunResult,
        RunStopped,
        aggregate,
        ensure_run,
        plan,
        robustness,
        run_dir_for,
        write_report,
    )

    jobs = plan(args.presets, args.seeds, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = (
        "rlr compare "
        + " ".join(args.presets)
        + f" --seeds {args.seeds}"
        + "".join(f" --set {s}" for s in args.set)
        + f" --attacks {','.join(attacks)}"
        + "".join(f" --attack-samples {s}" for s in args.attack_samples)
        + "".join(f" --attack-eps {e}" for e in args.attack_eps)
    )
    write_text_atomic(
        out / comparison_files.SPEC,
        json.dumps(
            {"presets": args.presets, "seeds": args.seeds, "set": args.set, "attacks": attacks, "command": command},
            indent=1,
        ),
    )
    results = []
    for i, (name, seed, config) in enumerate(jobs, 1):
        run_dir = run_dir_for(out, name, seed)
        console.print(f"[bold]({i}/{len(jobs)})[/bold] {name} seed {seed} → {run_dir}", highlight=False)
        try:
            summary = ensure_run(config, run_dir, args.device, watch)
        except RunStopped:
            console.print(f"interrupted; run the same command again to resume ({run_dir})")
            return 130
        rob = {}
        for attack in attacks:
            samples = own_samples.get(attack, default_samples)
            samples = ATTACKS[attack].default_samples if samples is None else samples
            with console.status(f"{attack} on {name} seed {seed}"):
                rob[attack] = robustness(config, run_dir, summary, attack, samples, args.device, own_eps.get(attack))
        results.append(RunResult(config, seed, summary, rob))
    rows = aggregate(results, attacks)
    write_report(out, rows, attacks, command)
    console.print((out / comparison_files.RESULTS_MD).read_text(encoding="utf-8"), highlight=False, markup=False)
    console.print(f"written: {out / comparison_files.RESULTS_MD}, {comparison_files.RESULTS_CSV} and plots in {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run presets over seeds and tabulate them side by side")
    p.add_argument("presets", nargs="+", help="preset names or files")
    p.add_argument("--seeds", type=int, default=1, help="runs per preset, seeds preset.seed + 0..N-1")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every preset (repeatable)"
    )
    p.add_argument("--attacks", default="fgsm", help=f"comma-separated: {', '.join(ATTACKS)} (default fgsm)")
    slow = ", ".join(f"{name} {info.default_samples}" for name, info in ATTACKS.items() if info.default_samples)
    p.add_argument(
        "--attack-samples",
        action="append",
        default=[],
        metavar="[ATTACK=]N",
        help="test images for attacks other than each run's own, and for the sanity probes "
        f"(0: all; default all, except {slow}); ATTACK=N for one attack (repeatable)",
    )
    p.add_argument(
        "--attack-eps",
        action="append",
        default=[],
        metavar="ATTACK=E1,E2",
        help="the ε list of one attack instead of the presets' eps (repeatable)",
    )
    p.add_argument("--out", default="comparisons/latest", help="comparison directory (default comparisons/latest)")
    p.add_argument("--device", choices=DEVICES)
    p.set_defaults(func=cmd_compare)
