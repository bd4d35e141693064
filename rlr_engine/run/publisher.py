"""The snapshots of a run: what the engine publishes for its dashboards, at a bounded rate.

A snapshot is an immutable record (records.Snapshot) swapped in atomically, so any thread reads
the latest with ``latest()`` and the engine never waits for a reader. The publisher also owns
what the snapshot is made of besides the trainer's state: the throughput window (training time
and samples since the last read of the device-side window) and the layer spectra, recomputed at
most every ``SPECTRA_INTERVAL_S`` and spaced so their SVDs take ≤ 1 % of the time.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from rlr_engine.control.records import LayerStats, Snapshot
from rlr_engine.core.config import RunConfig
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.trainer import Trainer

SPECTRA_INTERVAL_S = 1.0


class Publisher:
    """Snapshots of one run (see the module docstring). ``latest()`` is thread-safe; every other
    method runs on the engine thread."""

    def __init__(self, config: RunConfig, recorder: Recorder, run_dir: str) -> None:
        self.config = config
        self.recorder = recorder
        self.layer_stats: tuple[LayerStats, ...] = ()
        self._layers_at = 0.0
        self._spectra_interval = SPECTRA_INTERVAL_S
        self._window_start = time.monotonic()
        self._throughput = 0.0
        self._version = 0
        self._latest = Snapshot(
            preset=config.name,
            method=config.method_label,
            dataset=config.dataset,
            model=config.model,
            run_dir=run_dir,
            epochs=config.epochs,
            tau=config.tau,
            theta=config.truncate_theta,
            lr=config.lr,
        )

    def latest(self) -> Snapshot:
        return self._latest

    # -- the throughput window -------------------------------------------------------------------
    def reset_window(self, trainer: Trainer | None) -> None:
        """Start timing afresh; steps trained since the last read are not timed."""
        if trainer is not None and trainer.window_samples:
            trainer.read_window()
        self._window_start = time.monotonic()

    def flush_window(self, trainer: Trainer) -> None:
        """Read the device-side training window (one host sync) into the curves and the log."""
        if not trainer.window_samples:
            self._window_start = time.monotonic()
            return
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        loss, acc, n = trainer.read_window()
        self._throughput = n / elapsed
        self.recorder.train_window(
            trainer.step, trainer.epoch, loss, acc, trainer.lr, trainer.tau, self._throughput, elapsed
        )
        self._window_start = time.monotonic()

    def exclude_from_window(self, seconds: float) -> None:
        """Time spent on something else (an attack) does not count against the training rate."""
        self._window_start += seconds

    def snapshot_due(self) -> bool:
        return time.monotonic() - self._window_start >= self.config.snapshot_interval

    # -- layer spectra ----------------------------------------------------------------------------
    def refresh_layers(self, trainer: Trainer) -> None:
        """Read every layer's spectrum now."""
        self.layer_stats = trainer.layer_stats()
        self._layers_at = time.monotonic()

    def layers_stale(self) -> None:
        """Ranks changed: the next snapshot at a window boundary reads the spectra again."""
        self._layers_at = -math.inf

    def layers_due(self, trainer: Trainer) -> bool:
        return time.monotonic() - self._layers_at >= self._spectra_interval and trainer.at_window_boundary

    def final_facts(self, trainer: Trainer) -> dict[str, Any]:
        """What the summary of a run that ends now says of its training, ranks and κ."""
        report = trainer.report
        if trainer.at_window_boundary:
            self.refresh_layers(trainer)  # the run's final ranks and κ
        return {
            "steps": trainer.step,
            "total_steps": trainer.total_steps,
            "epochs": trainer.epoch,
            "rank_fraction": report.rank_fraction,
            "params": report.params,
            "dense_params": report.dense_params,
            "compression": report.compression,
            "layers": [
                {"name": s.name, "rank": s.rank, "full_rank": s.full_rank, "kappa": s.kappa} for s in self.layer_stats
            ],
        }

    # -- snapshots --------------------------------------------------------------------------------
    def publish(
        self, trainer: Trainer | None, state: str, message: str, method: str, device: str, with_layers: bool = False
    ) -> None:
        """Swap in a new snapshot of the run in ``state``; ``with_layers``: with fresh spectra."""
        if trainer is not None and with_layers:
            started = time.monotonic()
            self.refresh_layers(trainer)
            # SVDs of large dense weights are not free: space them so they take ≤ 1 % of the time.
            self._spectra_interval = max(SPECTRA_INTERVAL_S, 100 * (self._layers_at - started))
            self.recorder.spectra(trainer.step, self.layer_stats)
        recorder = self.recorder
        running = state == "running"
        # While paused (or after the end) there is no current rate, hence no ETA.
        rate = self._throughput if running else 0.0
        eta = None
        if trainer is not None and running and rate > 0:
            eta = max(trainer.total_steps - trainer.step, 0) * self.config.batch_size / rate
        self._version += 1
        changes: dict[str, Any] = dict(
            state=state,
            message=message,
            device=device,
            samples_per_s=rate,
            eta_s=eta,
            curves={name: series.points() for name, series in recorder.curves.items()},
            adversarial=recorder.attack_history[-1] if recorder.attack_history else None,
            adversarial_history=tuple(recorder.attack_history),
            events=tuple(recorder.recent_events()),
            last_checkpoint_step=recorder.last_checkpoint_step,
            version=self._version,
            **recorder.last_values,
        )
        if trainer is not None:
            report = trainer.report
            changes.update(
                method=method,
                step=trainer.step,
                epoch=trainer.epoch,
                total_steps=trainer.total_steps,
                tau=trainer.tau,
                theta=trainer.theta,
                lr=trainer.lr,
                beta=trainer.beta,
                adapt_every=trainer.adapt_every,
                layers=self.layer_stats,
                params=report.params,
                dense_params=report.dense_params,
                compression=report.compression,
                rank_fraction=report.rank_fraction,
            )
        self._latest = replace(self._latest, **changes)
