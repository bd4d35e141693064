"""The recorder: what happened in a run, in memory (curves, attack history, recent events) and in
its run directory (metrics, events, summary, checkpoint). The only writer of the run directory
while a run lives; it never touches the model itself — the Trainer hands it a payload.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlr_engine.control.protocol import attack_result_from_dict, attack_result_to_dict, event_from_dict, event_to_dict
from rlr_engine.control.records import RECENT_EVENTS, AttackResult, Event, LayerStats
from rlr_engine.control.run_dirs import append_jsonl, read_jsonl, trim_jsonl
from rlr_engine.control.run_files import CHECKPOINT, EVENTS, METRICS, SUMMARY, TENSORBOARD
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.config import RunConfig
from rlr_engine.core.history import DecimatingSeries
from rlr_engine.run.checkpoint import load_checkpoint, save_atomic
from rlr_engine.run.tensorboard_log import TensorBoardLog

CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")


class Recorder:
    """Owns ``run_dir``. ``event()`` may be called from any thread; the rest from the engine
    thread only."""

    def __init__(self, config: RunConfig, run_dir: str | Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.curves = {name: DecimatingSeries() for name in CURVES}
        self.last_values: dict[str, float | None] = {name: None for name in CURVES}
        self.attack_history: list[AttackResult] = []
        # A resumed run shows the events of its earlier life too, and numbers on from them.
        self.events: deque[Event] = deque(
            (event_from_dict(r) for r in read_jsonl(self.run_dir / EVENTS)), maxlen=RECENT_EVENTS
        )
        self.event_seq = self.events[-1].seq if self.events else 0
        self.last_checkpoint_step: int | None = None
        self._events_lock = threading.Lock()  # the control server logs client trouble from its thread
        # Told of every event as it is recorded (the engine passes them on to attached dashboards).
        self.on_event: Callable[[Event], None] | None = None
        # TensorBoard mirror (tensorboard = true): fed at the same points as metrics.jsonl.
        self.tensorboard = (
            TensorBoardLog(self.run_dir / TENSORBOARD, on_failure=self._tensorboard_failed)
            if config.tensorboard
            else None
        )

    def clear_summary(self) -> None:
        """A resumed run is no longer stopped or finished."""
        (self.run_dir / SUMMARY).unlink(missing_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    # -- events ---------------------------------------------------------------------------------
    def event(self, step: int, kind: str, message: str) -> Event:
        with self._events_lock:
            self.event_seq += 1
            event = Event(self.event_seq, step, time.time(), kind, message)
            self.events.append(event)
            try:
                append_jsonl(self.run_dir / EVENTS, event_to_dict(event))
            except OSError:
                pass  # the event is still shown; a full disk must not stop training
        # Outside the lock: a failed TensorBoard writer reports itself through event() again.
        if self.tensorboard is not None:
            self.tensorboard.event(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def recent_events(self) -> list[Event]:
        with self._events_lock:
            return list(self.events)

    # -- metrics --------------------------------------------------------------------------------
    def train_window(
        self,
        step: int,
        epoch: int,
        loss: float,
        acc: float,
        lr: float,
        tau: float,
        samples_per_s: float,
        seconds: float,
    ) -> None:
        if math.isfinite(loss):
            self.curves["train_loss"].append(step, loss)
            self.curves["train_acc"].append(step, acc)
            self.last_values["train_loss"], self.last_values["train_acc"] = loss, acc
        self._metric(
            {
                "type": "train",
                "step": step,
                "epoch": epoch,
                "train_loss": loss,
                "train_acc": acc,
                "lr": lr,
                "tau": tau,
                "samples_per_s": samples_per_s,
                "seconds": seconds,
            }
        )

    def evaluation(
        self,
        step: int,
        epoch: int,
        val_loss: float,
        val_acc: float,
        test_acc: float,
        layers: tuple[LayerStats, ...],
        compression: float | None = None,
    ) -> None:
        for name, value in (("val_loss", val_loss), ("val_acc", val_acc), ("test_acc", test_acc)):
            if not math.isnan(value):
                self.curves[name].append(step, value)
                self.last_values[name] = value
        self._metric(
            {
                "type": "eval",
                "step": step,
                "epoch": epoch,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_acc": test_acc,
            }
        )
        self._metric(
            {
                "type": "layers",
                "step": step,
                **({} if compression is None else {"compression": compression}),
                "layers": [
                    {
                        "name": s.name,
                        "rank": s.rank,
                        "full_rank": s.full_rank,
                        "kappa": s.kappa,
                        "sigma_max": s.sigma_max,
                    }
                    for s in layers
                ],
            }
        )
        self.event(step, "evaluation", f"epoch {epoch}: val acc {val_acc:.2%}, test acc {test_acc:.2%}")

    def attack(self, result: AttackResult) -> None:
        self.attack_history.append(result)
        self._metric({"type": "attack", **attack_result_to_dict(result)})
        pairs = ", ".join(f"{e:g}: {a:.1%}" for e, a in zip(result.eps, result.accuracy))
        self.event(result.step, "attack", f"{result.attack} on {result.samples} test images: {pairs}")

    def _metric(self, record: dict[str, Any]) -> None:
        try:
            append_jsonl(self.run_dir / METRICS, record)
        except OSError as error:
            self.event(record.get("step", 0), "warning", f"metrics not written: {error}")
        if self.tensorboard is not None:
            self.tensorboard.metrics(record)

    def spectra(self, step: int, layers: tuple[LayerStats, ...]) -> None:
        """Fresh layer spectra (at the engine's spectra cadence): σ histograms in TensorBoard."""
        if self.tensorboard is not None:
            self.tensorboard.spectra(step, layers)

    def _tensorboard_failed(self, step: int, message: str) -> None:
        self.event(step, "warning", message)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, trainer_state: dict[str, Any], config: RunConfig) -> Path:
        payload = dict(trainer_state)
        payload.update(
            {
                "curves": {name: series.state_dict() for name, series in self.curves.items()},
                "last_values": dict(self.last_values),
                "attack_history": [attack_result_to_dict(r) for r in self.attack_history],
                "config": config.to_dict(),
            }
        )
        path = save_atomic(payload, self.checkpoint_path)
        self.last_checkpoint_step = trainer_state["step"]
        self.event(trainer_state["step"], "checkpoint", f"checkpoint at step {trainer_state['step']} → {path}")
        return path

    def load_checkpoint(self, device) -> dict[str, Any]:
        """The checkpoint's payload (CheckpointError when it is missing or unreadable)."""
        return load_checkpoint(self.checkpoint_path, device)

    def restore(self, payload: dict[str, Any], trim: bool) -> None:
        """Curves, last values and attack history of a checkpoint; with ``trim``, metrics logged
        after it (by a run that went on and then died) are dropped from metrics.jsonl."""
        for name, state in payload["curves"].items():
            self.curves[name].load_state_dict(state)
        self.last_values = dict(payload["last_values"])
        self.attack_history = [attack_result_from_dict(r) for r in payload["attack_history"]]
        self.last_checkpoint_step = payload["step"]
        if trim:
            trim_jsonl(self.run_dir / METRICS, payload["step"])
        if self.tensorboard is not None:
            self.tensorboard.restart_after(payload["step"])

    # -- the end --------------------------------------------------------------------------------
    def write_summary(self, state: str, method: str, tau: float, facts: dict[str, Any]) -> None:
        """summary.json of this run (see ``write_summary``)."""
        write_summary(self.run_dir, self.config, state, method, tau, facts, self.last_values, self.last_checkpoint_step)

    def close(self) -> None:
        """The run's thread ends: flush what is buffered (TensorBoard event files)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def train_seconds(run_dir: Path) -> float:
    """Wall time a run spent training (evaluations and attacks excluded), from its logged windows."""
    return sum(r.get("seconds", 0.0) for r in read_jsonl(run_dir / METRICS) if r.get("type") == "train")


def write_summary(
    run_dir: Path,
    config: RunConfig,
    state: str,
    method: str,
    tau: float,
    facts: dict[str, Any],
    last_values: dict[str, float | None],
    last_checkpoint_step: int | None,
) -> None:
    """summary.json: ``state`` (finished, stopped or failed), the method as it ended (its label
    names the τ and β set live), the τ it ended with and the run's final numbers."""
    summary = {
        "state": state,
        "preset": config.name,
        "method": method,
        "tau": tau,
        "dataset": config.dataset,
        "model": config.model,
        **facts,
        "val_acc": last_values.get("val_acc"),
        "test_acc": last_values.get("test_acc"),
        "last_checkpoint_step": last_checkpoint_step,
        "train_seconds": train_seconds(run_dir),
    }
    write_text_atomic(run_dir / SUMMARY, json.dumps(summary, indent=2))
