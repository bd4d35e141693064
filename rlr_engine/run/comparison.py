"""``rlr compare``: run a set of presets over several seeds and tabulate them side by side.

Layout of a comparison directory::

    comparison.json            what was asked (presets, seeds, overrides, attacks)
    runs/<preset>-seed<k>/     ordinary run directories (reused when finished, resumed otherwise)
    results.md, results.csv    per method: accuracy per ε (mean ± std over seeds), ranks, κ, time,
                               and the sanity flags (rlr_engine.core.sanity) of each method
    accuracy_vs_eps_<attack>.png, kappa_per_layer.png
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, Sequence

from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.workload.attacks import ATTACKS
from rlr_engine.core.formatting import pct_pm
from rlr_engine.core.catalog import DEVICES
from rlr_engine.control.records import AttackSpec, Stop
from rlr_engine.core.sanity import AttackRecord, Component, sanity_report
from rlr_engine.core.presets import PresetError, RunConfig, load_preset
from rlr_engine.control.run_files import CHECKPOINT, SUMMARY
from rlr_engine.control.run_dirs import read_run_config, write_config
from rlr_engine.core.validation import parse_eps_text

SPEC_FILE = "comparison.json"


@dataclass(frozen=True)
class RunResult:
    """The numbers one finished run contributes."""

    config: RunConfig
    seed: int
    summary: dict[str, Any]
    # attack → {"eps": [...], "accuracy": [...], "samples": n, "parts": [...], "probes": [...]}
    robustness: dict[str, dict[str, Any]]


def run_dir_for(out: Path, preset: str, seed: int) -> Path:
    return out / "runs" / f"{preset}-seed{seed}"


def plan(presets: Sequence[str], seeds: int, overrides: Sequence[str]) -> list[tuple[str, int, RunConfig]]:
    """Validate every preset with its overrides and seed before anything runs."""
    jobs = []
    for preset in presets:
        base = load_preset(preset, overrides)
        for k in range(seeds):
            jobs.append((base.name, base.seed + k, base.replace(seed=base.seed + k)))
    return jobs


class RunFailed(Exception):
    """A run of the comparison ended in the failed state; the message says which and why."""


class RunStopped(Exception):
    """A run of the comparison was stopped (Ctrl+C) before it finished; it can be resumed."""


def ensure_run(config: RunConfig, run_dir: Path, device: str | None, watch) -> dict[str, Any]:
    """Finish one run: reuse it when finished, resume it when it has a checkpoint, else start it.
    Raises RunFailed or RunStopped when it does not finish."""
    from rlr_engine.run.engine import Engine

    if device:
        config = config.replace(device=device)
    summary_path = run_dir / SUMMARY
    resume = False
    if run_dir.is_dir():
        stored = read_run_config(run_dir)
        if _comparable(stored) != _comparable(config):
            raise PresetError(f"{run_dir} holds a run with different settings; remove it or choose "
                              f"another --out")
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if summary.get("state") == "finished":
                return summary
        resume = (run_dir / CHECKPOINT).is_file()
        if not resume:
            shutil.rmtree(run_dir)
    if not resume:
        run_dir.mkdir(parents=True)
        write_config(run_dir, config)
    engine = Engine(config, run_dir, resume=resume).start()
    # Ctrl+C stops the run cleanly (final checkpoint); the same command resumes it.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: engine.send(Stop()))
    try:
        snap = watch(engine, f"{config.name} seed {config.seed}")
    finally:
        signal.signal(signal.SIGINT, previous)
    if snap.state == "failed":
        raise RunFailed(f"run {run_dir} failed: {snap.message}")
    if snap.state != "finished":
        raise RunStopped(f"run {run_dir} stopped at step {snap.step}")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _comparable(config: RunConfig) -> dict[str, Any]:
    """Settings that must match for a stored run to be reused (where it runs does not matter)."""
    raw = config.to_dict()
    for key in ("device", "data_dir", "download", "snapshot_interval"):
        raw.pop(key)
    return raw


def robustness(config: RunConfig, run_dir: Path, summary: dict[str, Any], attack: str, samples: int,
               device: str | None, eps: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy per ε (``eps``, or the preset's) under ``attack`` for a finished run, with the
    parts of an ensemble attack and the probes the sanity checks need, computed once from its
    checkpoint and cached in the run directory. The run's own final attack (whole test set) is
    reused when the ε match; only its probes are run."""
    eps = list(eps) if eps else list(config.eps)
    cache = run_dir / f"robustness-{attack}-{samples}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["eps"] == eps:
            return cached
    from rlr_engine.workload.attacks import probe_specs, robustness as measure, robustness_with_checks
    from rlr_engine.workload.data import to_float
    from rlr_engine.run.saved_model import load_evaluation_target

    _, _, model, images, labels = load_evaluation_target(run_dir / CHECKPOINT, samples,
                                                         device=device or config.device)
    spec = config.attack_spec(attack, eps=eps)
    if attack == summary.get("attack") and list(summary["eps"]) == eps:
        probes = [measure(model, images, labels, p, to_input=to_float) for p in probe_specs(spec, config.dataset)]
        result = {"eps": summary["eps"], "accuracy": summary["adversarial_accuracy"], "samples": 0, "parts": []}
    else:
        checked = robustness_with_checks(model, images, labels, spec, config.dataset, to_input=to_float)
        probes, result = list(checked.probes), checked.result.to_dict()
    result["probes"] = [p.to_dict() for p in probes]
    write_text_atomic(cache, json.dumps(result))  # a kill mid-write must not leave half a cache to read
    return result


def row_sanity(row: dict[str, Any], attacks: Sequence[str], dataset: str | None) -> dict[str, list]:
    """The sanity checks over one comparison row: its attacks and their probes, at the mean over
    seeds."""
    records = []
    for attack in attacks:
        entry = row[attack]
        info = ATTACKS[attack]
        records.append(AttackRecord(attack, info.kind, info.norm, tuple(entry["eps"]),
                                    tuple(m for m, _ in entry["accuracy"]), entry["samples"],
                                    tuple(Component.from_dict(p) for p in entry.get("parts", []))))
        for probe in entry.get("probes", []):
            pinfo = ATTACKS[probe["attack"]]
            records.append(AttackRecord(probe["attack"], pinfo.kind, pinfo.norm, tuple(probe["eps"]),
                                        tuple(probe["accuracy"]), probe["samples"]))
    report = sanity_report(records, dataset)
    return report.to_dict()


# -- tables ---------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return mean(values), pstdev(values) if len(values) > 1 else 0.0


def _mean_columns(columns: Sequence[Sequence[float]]) -> list[float]:
    return [mean(values) for values in zip(*columns)]


def _kappas(summary: dict[str, Any]) -> list[float]:
    return [layer["kappa"] for layer in summary["layers"]]


def aggregate(results: Sequence[RunResult], attacks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per preset: mean and std over seeds of every reported number."""
    rows = []
    by_preset: dict[str, list[RunResult]] = {}
    for r in results:
        by_preset.setdefault(r.config.name, []).append(r)
    for name, runs in by_preset.items():
        config = runs[0].config
        row: dict[str, Any] = {
            "preset": name, "method": config.method_label, "seeds": len(runs),
            # A rank-adaptive run ends at ranks of its own: the mean over seeds (fixed ranks: the same).
            "rank_fraction": mean(r.summary["rank_fraction"] for r in runs),
            "compression": mean(r.summary["compression"] for r in runs),
            "params": round(mean(r.summary["params"] for r in runs)),
            "clean": _mean_std([r.summary["test_acc"] for r in runs]),
            "kappa_mean": _mean_std([mean(_kappas(r.summary)) for r in runs]),
            "kappa_max": _mean_std([max(_kappas(r.summary)) for r in runs]),
            "train_seconds": _mean_std([r.summary.get("train_seconds", math.nan) for r in runs]),
            "kappa_layers": {layer["name"]: _mean_std([next(l["kappa"] for l in r.summary["layers"]
                                                           if l["name"] == layer["name"]) for r in runs])[0]
                             for layer in runs[0].summary["layers"]},
        }
        for attack in attacks:
            first = runs[0].robustness[attack]
            eps = first["eps"]
            row[attack] = {"eps": eps, "accuracy": [_mean_std([r.robustness[attack]["accuracy"][i] for r in runs])
                                                    for i in range(len(eps))],
                           "samples": first["samples"],
                           "parts": [dict(part, accuracy=_mean_columns([r.robustness[attack]["parts"][j]["accuracy"]
                                                                         for r in runs]))
                                     for j, part in enumerate(first.get("parts", []))],
                           "probes": [dict(probe, accuracy=_mean_columns([r.robustness[attack]["probes"][j]["accuracy"]
                                                                           for r in runs]))
                                      for j, probe in enumerate(first.get("probes", []))]}
        row["sanity"] = row_sanity(row, attacks, config.dataset)
        rows.append(row)
    return rows


def _pm(value: tuple[float, float]) -> str:
    """Mean ± standard deviation of a plain number (κ)."""
    m, s = value
    return "–" if math.isnan(m) else f"{m:.3g} ± {s:.2g}"


def markdown_table(rows: Sequence[dict[str, Any]], attack: str) -> str:
    eps = rows[0][attack]["eps"]
    head = (["method", "preset", "rank kept", "param. compression"] +
            [("clean" if e == 0 else f"ε={e:g}") for e in eps] + ["mean κ", "max κ", "train time (s)", "flags"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["preset"], f"{row['rank_fraction']:.0%}", f"{row['compression']:.1%}"]
        cells += [pct_pm(*a) for a in row[attack]["accuracy"]]
        cells += [_pm(row["kappa_mean"]), _pm(row["kappa_max"]),
                  f"{row['train_seconds'][0]:.1f}", _flag_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _flag_cell(row: dict[str, Any]) -> str:
    codes = sorted({f["code"] for f in row["sanity"]["flags"]})
    return "⚠ " + ", ".join(codes) if codes else "ok"


def sanity_section(rows: Sequence[dict[str, Any]]) -> str:
    """Every flag and every check that could not run, per method."""
    lines = ["## Sanity checks\n",
             "Flags (see rlr_engine/core/sanity.py): accuracy rising with ε; an iterative attack above FGSM; the "
             "black-box Square attack beating the white-box ones (gradient masking); more than 10 % correct at "
             "a large ε. Probes (FGSM/PGD references, the large ε) are measured on the attack subset.\n"]
    for row in rows:
        lines.append(f"- **{row['method']}** ({row['preset']}):")
        lines += [f"  - ⚠ {f['message']}" for f in row["sanity"]["flags"]] or ["  - no flags"]
        lines += [f"  - not checked: {why}" for why in row["sanity"]["not_checked"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: Sequence[dict[str, Any]], attacks: Sequence[str], command: str) -> None:
    seeds = rows[0]["seeds"] if rows else 0
    parts = [f"# Comparison\n\nMade with:\n\n```\n{command}\n```\n",
             f"Accuracy in % on the test set, mean ± std over {seeds} seed(s). "
             "Parameter compression = 1 − params / params of the dense model, and rank kept, at the end "
             "of training (rank-adaptive methods: mean over the seeds); κ over the compressible layers "
             "(κ of S for low-rank layers).\n"]
    for attack in attacks:
        samples = rows[0][attack]["samples"]
        where = "the whole test set" if not samples else f"a seeded subset of {samples} test images"
        parts.append(f"## {attack} (ε in pixel units, on {where})\n\n{markdown_table(rows, attack)}\n")
        parts.append(f"![accuracy vs ε under {attack}](accuracy_vs_eps_{attack}.png)\n")
    parts.append(sanity_section(rows))
    parts.append("![κ per layer](kappa_per_layer.png)\n")
    (out / "results.md").write_text("\n".join(parts), encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["preset", "method", "seeds", "rank_fraction", "compression", "attack", "eps",
                     "accuracy_mean", "accuracy_std", "kappa_mean", "kappa_max", "train_seconds", "flags"])
    for row in rows:
        for attack in attacks:
            for e, (m, s) in zip(row[attack]["eps"], row[attack]["accuracy"]):
                writer.writerow([row["preset"], row["method"], row["seeds"], row["rank_fraction"],
                                 row["compression"], attack, e, m, s, row["kappa_mean"][0],
                                 row["kappa_max"][0], row["train_seconds"][0],
                                 ";".join(sorted({f["code"] for f in row["sanity"]["flags"]}))])
    (out / "results.csv").write_text(buffer.getvalue(), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(list(rows), indent=1), encoding="utf-8")
    write_plots(out, rows, attacks)


def write_plots(out: Path, rows: Sequence[dict[str, Any]], attacks: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for attack in attacks:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in rows:
            eps = row[attack]["eps"]
            means = [100 * m for m, _ in row[attack]["accuracy"]]
            stds = [100 * s for _, s in row[attack]["accuracy"]]
            ax.errorbar(eps, means, yerr=stds, marker="o", capsize=3,
                        label=f"{row['method']} ({row['rank_fraction']:.0%} rank)")
        ax.set_xlabel("ε (pixel units)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy under {attack}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"accuracy_vs_eps_{attack}.png", dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layer_names = list(rows[0]["kappa_layers"]) if rows else []
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(layer_names))]
        ax.bar(xs, [row["kappa_layers"].get(n, math.nan) for n in layer_names], width,
               label=f"{row['method']} ({row['rank_fraction']:.0%} rank)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layer_names))], layer_names)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("κ (condition number)")
    ax.set_title("Condition number per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "kappa_per_layer.png", dpi=120)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------
def per_attack(values: Sequence[str], attacks: Sequence[str], flag: str, parse) -> tuple[Any, dict[str, Any]]:
    """``--flag VALUE`` (every attack) and ``--flag ATTACK=VALUE`` (one attack), repeatable:
    (the value for every attack or None, {attack: its own value}). ``parse`` turns the text into
    the value or raises ValueError with what is allowed."""
    from rlr_engine.cli.console import UserError

    default, own = None, {}
    for text in values:
        name, sep, value = text.partition("=")
        if sep and name.strip() not in attacks:
            raise UserError(f"{flag} {text!r}: {name.strip()!r} is not one of the attacks asked for "
                            f"({', '.join(attacks)})")
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
    from rlr_engine.cli.console import UserError, console, watch

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be >= 1")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    bad = [a for a in attacks if a not in ATTACKS]
    if bad or not attacks:
        raise UserError(f"--attacks {args.attacks!r}: choose from {', '.join(ATTACKS)}")
    from rlr_engine.workload.attacks import AttackUnavailable, check_available

    try:
        for attack in attacks:
            check_available(attack)
    except AttackUnavailable as error:
        raise UserError(f"--attacks {args.attacks!r}: {error}") from None
    default_samples, own_samples = per_attack(args.attack_samples, attacks, "--attack-samples", parse_samples)
    every_attack_eps, own_eps = per_attack(args.attack_eps, attacks, "--attack-eps", parse_eps_text)
    if every_attack_eps is not None:
        raise UserError(f"--attack-eps {args.attack_eps[0]!r}: name the attack (ATTACK=E1,E2); the presets' "
                        f"eps list is every other attack's")
    for attack, eps in own_eps.items():
        try:
            AttackSpec(attack, eps)
        except ValueError as error:
            raise UserError(f"--attack-eps {attack}={','.join(map(str, eps))}: {error}") from None
    jobs = plan(args.presets, args.seeds, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "rlr compare " + " ".join(args.presets) + f" --seeds {args.seeds}" + "".join(
        f" --set {s}" for s in args.set) + f" --attacks {','.join(attacks)}" + "".join(
        f" --attack-samples {s}" for s in args.attack_samples) + "".join(f" --attack-eps {e}" for e in args.attack_eps)
    (out / SPEC_FILE).write_text(json.dumps({"presets": args.presets, "seeds": args.seeds, "set": args.set,
                                             "attacks": attacks, "command": command}, indent=1), encoding="utf-8")
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
    console.print((out / "results.md").read_text(encoding="utf-8"), highlight=False, markup=False)
    console.print(f"written: {out / 'results.md'}, results.csv and plots in {out}")
    return 0


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="run presets over seeds and tabulate them side by side")
    p.add_argument("presets", nargs="+", help="preset names or files")
    p.add_argument("--seeds", type=int, default=1, help="runs per preset, seeds preset.seed + 0..N-1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every preset (repeatable)")
    p.add_argument("--attacks", default="fgsm", help=f"comma-separated: {', '.join(ATTACKS)} (default fgsm)")
    slow = ", ".join(f"{name} {info.default_samples}" for name, info in ATTACKS.items() if info.default_samples)
    p.add_argument("--attack-samples", action="append", default=[], metavar="[ATTACK=]N",
                   help="test images for attacks other than each run's own, and for the sanity probes "
                        f"(0: all; default all, except {slow}); ATTACK=N for one attack (repeatable)")
    p.add_argument("--attack-eps", action="append", default=[], metavar="ATTACK=E1,E2",
                   help="the ε list of one attack instead of the presets' eps (repeatable)")
    p.add_argument("--out", default="comparisons/latest", help="comparison directory (default comparisons/latest)")
    p.add_argument("--device", choices=DEVICES)
    p.set_defaults(func=cmd_compare)
