"""Shared pieces of the throughput benchmarks: a run config and reading an engine's throughput."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from rlr_engine.control.run_dirs import read_jsonl
from rlr_engine.control.run_files import METRICS
from rlr_engine.core.config import RunConfig


def benchmark_config(steps: int, **changes) -> RunConfig:
    """LeNet5 on MNIST-shaped synthetic data, CondLR τ = 0.1 with 80 % of the rank removed;
    no scheduled evaluation, attack or checkpoint inside the timed steps."""
    base = dict(
        name="bench",
        dataset="synthetic-28",
        model="lenet5",
        method="lowrank",
        tau=0.1,
        rank_fraction=0.2,
        epochs=1000,
        max_steps=steps,
        batch_size=128,
        lr=0.05,
        momentum=0.3,
        eval_every=0,
        attack_every=0,
        checkpoint_every=0,
        attack_samples=100,
        eps=(0.0, 0.01),
        device="cpu",
    )
    base.update(changes)
    return RunConfig(**base)


def engine_samples_per_s(run_dir: Path, skip_windows: int = 2) -> float:
    """Training throughput from the engine's own windows. Each window runs from the end of the
    previous one, so it includes the cost of publishing the snapshot in between."""
    windows = [r for r in read_jsonl(run_dir / METRICS) if r.get("type") == "train"][skip_windows:-1]
    seconds = sum(w["seconds"] for w in windows)
    samples = sum(w["samples_per_s"] * w["seconds"] for w in windows)
    return samples / seconds


def report(name: str, baseline: list[float], measured: list[float], target: float) -> None:
    b, m = statistics.median(baseline), statistics.median(measured)
    print(f"baseline: {', '.join(f'{v:,.0f}' for v in baseline)} samples/s (median {b:,.0f})")
    print(f"{name}: {', '.join(f'{v:,.0f}' for v in measured)} samples/s (median {m:,.0f})")
    ratio = m / b
    print(f"ratio {name} / baseline = {ratio:.3f} (target ≥ {target:.2f}: {'met' if ratio >= target else 'NOT met'})")


def wait(engine, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.latest().active and time.monotonic() < deadline:
        time.sleep(0.25)  # the dashboard's poll rate
        engine.latest()
    engine.join(timeout=60)
