"""``rlr compare``'s work: train a set of presets over several seeds, measure each run's
robustness once (cached in its run directory), and tabulate the runs side by side (mean ± std
over seeds) with the sanity flags of each method. The files it writes are named in
control/comparison_files.py."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

from rlr_engine.control import comparison_files
from rlr_engine.control.records import Snapshot
from rlr_engine.control.run_dirs import create_run_dir, discard_run_dir, engine_alive, read_run_config, write_config
from rlr_engine.control.run_files import CHECKPOINT, SUMMARY
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.catalog import ATTACKS
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import CannotStart, PresetError, RunFailed, UserError
from rlr_engine.core.formatting import pct_pm
from rlr_engine.core.presets import load_preset
from rlr_engine.core.sanity import AttackRecord, Component, sanity_report
from rlr_engine.run.engine import Engine
from rlr_engine.run.host import serve_run
from rlr_engine.run.saved_model import load_evaluation_target
from rlr_engine.workload.attacks import probe_specs, robustness_with_checks
from rlr_engine.workload.attacks import robustness as measure
from rlr_engine.workload.data import to_float


@dataclass(frozen=True)
class RunResult:
    """The numbers one finished run contributes."""

    config: RunConfig
    seed: int
    summary: dict[str, Any]
    # attack → {"eps": [...], "accuracy": [...], "samples": n, "parts": [...], "probes": [...]}
    robustness: dict[str, dict[str, Any]]


def run_dir_for(out: Path, preset: str, seed: int) -> Path:
    return out / comparison_files.RUNS / f"{preset}-seed{seed}"


def plan(presets: Sequence[str], seeds: int, overrides: Sequence[str]) -> list[tuple[str, int, RunConfig]]:
    """Validate every preset with its overrides and seed before anything runs."""
    jobs = []
    for preset in presets:
        base = load_preset(preset, overrides)
        for k in range(seeds):
            jobs.append((base.name, base.seed + k, base.replace(seed=base.seed + k)))
    return jobs


class RunStopped(Exception):
    """A run of the comparison was stopped (Ctrl+C) before it finished; it can be resumed."""


def ensure_run(
    config: RunConfig, run_dir: Path, device: str | None, watch: Callable[[Engine, str], Snapshot]
) -> dict[str, Any]:
    """Finish one run: reuse it when finished, resume it when it has a checkpoint, else start it.
    Its engine is hosted as ``rlr train`` hosts one (run lock, control socket, clean stop on
    Ctrl+C or SIGTERM), so ``rlr runs`` lists it and ``rlr-tui --attach`` steers it while it
    trains; ``watch(engine, title)`` shows it meanwhile. Raises RunFailed (nothing left behind
    by a new run that could not start) or RunStopped when it does not finish."""
    if device:
        config = config.replace(device=device)
    summary_path = run_dir / SUMMARY
    resume = False
    if run_dir.is_dir():
        stored = read_run_config(run_dir)
        if _comparable(stored) != _comparable(config):
            raise PresetError(f"{run_dir} holds a run with different settings; remove it or choose another --out")
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if summary.get("state") == "finished":
                return summary
        if engine_alive(run_dir):
            raise UserError(f"{run_dir} is training in another process; attach with: rlr-tui --attach {run_dir}")
        resume = (run_dir / CHECKPOINT).is_file()
        if not resume:
            shutil.rmtree(run_dir)
    try:
        engine = Engine(config, run_dir, resume=resume).setup()
        if resume:
            write_config(run_dir, config)
        else:
            create_run_dir(run_dir, config)
        try:
            snap, _ = serve_run(engine, detached=False, follow=lambda e: watch(e, f"{config.name} seed {config.seed}"))
        except CannotStart:
            if not resume:
                discard_run_dir(run_dir)
            raise
    except CannotStart as error:
        raise RunFailed(f"run {run_dir} failed: {error}") from None
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


def robustness(
    config: RunConfig,
    run_dir: Path,
    summary: dict[str, Any],
    attack: str,
    samples: int,
    device: str | None,
    eps: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Accuracy per ε (``eps``, or the preset's) under ``attack`` for a finished run, with the
    parts of an ensemble attack and the probes the sanity checks need, computed once from its
    checkpoint and cached in the run directory. The run's own final attack is reused when it
    attacked the same images at the same ε; only its probes are run then. Random draws are
    seeded as the run seeds its attacks (``RunConfig.attack_seed`` of the final step), and the
    seed is recorded."""
    eps = list(eps) if eps else list(config.eps)
    seed = config.attack_seed(int(summary["steps"]))
    cache = run_dir / f"robustness-{attack}-{samples}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["eps"] == eps and cached.get("seed") == seed:
            return cached
    _, _, model, images, labels = load_evaluation_target(run_dir / CHECKPOINT, samples, device=device or config.device)
    spec = config.attack_spec(attack, eps=eps)
    # The run's own final attack is the same measurement when it attacked the same images: every
    # test image (a summary without ``attack_samples`` predates subsets and attacked them all).
    same_images = samples == 0 and summary.get("attack_samples", len(labels)) == len(labels)
    if attack == summary.get("attack") and list(summary["eps"]) == eps and same_images:
        probes = [
            measure(model, images, labels, p, to_input=to_float, seed=seed) for p in probe_specs(spec, config.dataset)
        ]
        result = {
            "eps": summary["eps"],
            "accuracy": summary["adversarial_accuracy"],
            "samples": len(labels),
            "parts": [],
        }
    else:
        checked = robustness_with_checks(model, images, labels, spec, config.dataset, to_input=to_float, seed=seed)
        probes, result = list(checked.probes), checked.result.to_dict()
    result["seed"] = seed
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
        records.append(
            AttackRecord(
                attack,
                info.kind,
                info.norm,
                tuple(entry["eps"]),
                tuple(m for m, _ in entry["accuracy"]),
                entry["samples"],
                tuple(Component.from_dict(p) for p in entry.get("parts", [])),
            )
        )
        for probe in entry.get("probes", []):
            pinfo = ATTACKS[probe["attack"]]
            records.append(
                AttackRecord(
                    probe["attack"],
                    pinfo.kind,
                    pinfo.norm,
                    tuple(probe["eps"]),
                    tuple(probe["accuracy"]),
                    probe["samples"],
                )
            )
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
            "preset": name,
            "method": config.method_label,
            "seeds": len(runs),
            # A rank-adaptive run ends at ranks of its own: the mean over seeds (fixed ranks: the same).
            "rank_fraction": mean(r.summary["rank_fraction"] for r in runs),
            "compression": mean(r.summary["compression"] for r in runs),
            "params": round(mean(r.summary["params"] for r in runs)),
            "clean": _mean_std([r.summary["test_acc"] for r in runs]),
            "kappa_mean": _mean_std([mean(_kappas(r.summary)) for r in runs]),
            "kappa_max": _mean_std([max(_kappas(r.summary)) for r in runs]),
            "train_seconds": _mean_std([r.summary.get("train_seconds", math.nan) for r in runs]),
            "kappa_layers": {
                layer["name"]: _mean_std(
                    [next(l["kappa"] for l in r.summary["layers"] if l["name"] == layer["name"]) for r in runs]
                )[0]
                for layer in runs[0].summary["layers"]
            },
        }
        for attack in attacks:
            first = runs[0].robustness[attack]
            eps = first["eps"]
            row[attack] = {
                "eps": eps,
                "accuracy": [_mean_std([r.robustness[attack]["accuracy"][i] for r in runs]) for i in range(len(eps))],
                "samples": first["samples"],
                "parts": [
                    dict(part, accuracy=_mean_columns([r.robustness[attack]["parts"][j]["accuracy"] for r in runs]))
                    for j, part in enumerate(first.get("parts", []))
                ],
                "probes": [
                    dict(probe, accuracy=_mean_columns([r.robustness[attack]["probes"][j]["accuracy"] for r in runs]))
                    for j, probe in enumerate(first.get("probes", []))
                ],
            }
        row["sanity"] = row_sanity(row, attacks, config.dataset)
        rows.append(row)
    return rows


def _pm(value: tuple[float, float]) -> str:
    """Mean ± standard deviation of a plain number (κ)."""
    m, s = value
    return "–" if math.isnan(m) else f"{m:.3g} ± {s:.2g}"


def markdown_table(rows: Sequence[dict[str, Any]], attack: str) -> str:
    eps = rows[0][attack]["eps"]
    head = (
        ["method", "preset", "rank kept", "param. compression"]
        + [("clean" if e == 0 else f"ε={e:g}") for e in eps]
        + ["mean κ", "max κ", "train time (s)", "flags"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"], row["preset"], f"{row['rank_fraction']:.0%}", f"{row['compression']:.1%}"]
        cells += [pct_pm(*a) for a in row[attack]["accuracy"]]
        cells += [_pm(row["kappa_mean"]), _pm(row["kappa_max"]), f"{row['train_seconds'][0]:.1f}", _flag_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _flag_cell(row: dict[str, Any]) -> str:
    codes = sorted({f["code"] for f in row["sanity"]["flags"]})
    return "⚠ " + ", ".join(codes) if codes else "ok"


def sanity_section(rows: Sequence[dict[str, Any]]) -> str:
    """Every flag and every check that could not run, per method."""
    lines = [
        "## Sanity checks\n",
        "Flags (see rlr_engine/core/sanity.py): accuracy rising with ε; an iterative attack above FGSM; the "
        "black-box Square attack beating the white-box ones (gradient masking); more than 10 % correct at "
        "a large ε. Probes (FGSM/PGD references, the large ε) are measured on the attack subset.\n",
    ]
    for row in rows:
        lines.append(f"- **{row['method']}** ({row['preset']}):")
        lines += [f"  - ⚠ {f['message']}" for f in row["sanity"]["flags"]] or ["  - no flags"]
        lines += [f"  - not checked: {why}" for why in row["sanity"]["not_checked"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: Sequence[dict[str, Any]], attacks: Sequence[str], command: str) -> None:
    seeds = rows[0]["seeds"] if rows else 0
    parts = [
        f"# Comparison\n\nMade with:\n\n```\n{command}\n```\n",
        f"Accuracy in % on the test set, mean ± std over {seeds} seed(s). "
        "Parameter compression = 1 − params / params of the dense model, and rank kept, at the end "
        "of training (rank-adaptive methods: mean over the seeds); κ over the compressible layers "
        "(κ of S for low-rank layers).\n",
    ]
    for attack in attacks:
        samples = rows[0][attack]["samples"]
        where = "the whole test set" if not samples else f"a seeded subset of {samples} test images"
        parts.append(f"## {attack} (ε in pixel units, on {where})\n\n{markdown_table(rows, attack)}\n")
        parts.append(f"![accuracy vs ε under {attack}]({comparison_files.accuracy_plot(attack)})\n")
    parts.append(sanity_section(rows))
    parts.append(f"![κ per layer]({comparison_files.KAPPA_PLOT})\n")
    write_text_atomic(out / comparison_files.RESULTS_MD, "\n".join(parts))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "preset",
            "method",
            "seeds",
            "rank_fraction",
            "compression",
            "attack",
            "eps",
            "accuracy_mean",
            "accuracy_std",
            "kappa_mean",
            "kappa_max",
            "train_seconds",
            "flags",
        ]
    )
    for row in rows:
        for attack in attacks:
            for e, (m, s) in zip(row[attack]["eps"], row[attack]["accuracy"]):
                writer.writerow(
                    [
                        row["preset"],
                        row["method"],
                        row["seeds"],
                        row["rank_fraction"],
                        row["compression"],
                        attack,
                        e,
                        m,
                        s,
                        row["kappa_mean"][0],
                        row["kappa_max"][0],
                        row["train_seconds"][0],
                        ";".join(sorted({f["code"] for f in row["sanity"]["flags"]})),
                    ]
                )
    write_text_atomic(out / comparison_files.RESULTS_CSV, buffer.getvalue())
    write_text_atomic(out / comparison_files.RESULTS_JSON, json.dumps(list(rows), indent=1))
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
            ax.errorbar(
                eps, means, yerr=stds, marker="o", capsize=3, label=f"{row['method']} ({row['rank_fraction']:.0%} rank)"
            )
        ax.set_xlabel("ε (pixel units)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy under {attack}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / comparison_files.accuracy_plot(attack), dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    layer_names = list(rows[0]["kappa_layers"]) if rows else []
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [j + i * width for j in range(len(layer_names))]
        ax.bar(
            xs,
            [row["kappa_layers"].get(n, math.nan) for n in layer_names],
            width,
            label=f"{row['method']} ({row['rank_fraction']:.0%} rank)",
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layer_names))], layer_names)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("κ (condition number)")
    ax.set_title("Condition number per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / comparison_files.KAPPA_PLOT, dpi=120)
    plt.close(fig)
