"""The engine loop: one thread that drives a Trainer, applies commands between steps and
publishes snapshots.

Commands come in through one thread-safe queue (``send``) and are applied at the next step
boundary through the handler table in commands.py; each gets an acknowledgement (applied or
rejected, with the reason). Snapshots go out as immutable records through an atomic reference
swap (``latest()``), at a bounded rate. The engine never waits for whoever reads them: a
``listener`` (the control server) is told of every event and acknowledgement and must not block.

States: starting → running ⇄ paused → finished | stopped | failed.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Protocol

from rlr_engine.run.boundary import FollowerRecorder, StepBoundary
from rlr_engine.run.checkpoint import CheckpointError
from rlr_engine.run.commands import CHANGES_LAYERS, HANDLERS
from rlr_engine.core.errors import CannotStart
from rlr_engine.run.distributed import SINGLE, Ranks
from rlr_engine.core.presets import RESTORED_ON_RESUME, RunConfig, method_label
from rlr_engine.control.protocol import ENGINE_SESSION
from rlr_engine.run.recorder import Recorder
from rlr_engine.control.records import Ack, AttackResult, AttackSpec, Command, Event, LayerStats, Note, Snapshot, Stop
from rlr_engine.control.run_files import ERROR_LOG
from rlr_engine.method.condlr import RankChange
from rlr_engine.run.trainer import Trainer, describe_device, load_run_data, resolve_device

SPECTRA_INTERVAL_S = 1.0
MAX_ACKS = 100


class EngineListener(Protocol):
    def event(self, event: Event) -> None: ...

    def ack(self, ack: Ack) -> None: ...


@dataclass(frozen=True)
class _Request:
    command: Command
    request_id: str
    session: int


class Engine:
    """Trains one run in a background thread.

    ``send(command)`` queues a command; ``latest()`` returns the newest Snapshot; ``acks`` holds
    the latest acknowledgements. With ``resume=True`` the run continues from its checkpoint: same
    step counter, optimizer state, ranks, τ and RNG.

    ``setup()`` loads the checkpoint (when resuming), the data and the model, writing nothing:
    call it before the run directory exists to fail early; ``start()`` calls it when nobody did.

    Under torch.distributed every rank runs an Engine with its ``ranks``: rank 0 records and
    takes commands; the others record nothing; all apply rank 0's commands at the same step
    boundary (boundary.py).
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, resume: bool = False, ranks: Ranks = SINGLE,
                 resume_settings: Iterable[str] = ()) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume_requested = resume
        self.resume_settings = frozenset(resume_settings)
        self._resume_notes: list[tuple[str, str]] = []  # (kind, message) events of the resume
        self.ranks = ranks
        self.recorder = (Recorder if ranks.is_main else FollowerRecorder)(config, self.run_dir)
        self.recorder.on_event = self._tell_listener
        self.boundary = StepBoundary(ranks) if ranks.distributed else None
        self._flush_due = False
        self.trainer: Trainer | None = None
        self.device_name = ""
        self.state = "starting"
        self.message = ""
        self.acks: deque[Ack] = deque(maxlen=MAX_ACKS)
        self.listener: EngineListener | None = None
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._resume_payload: dict[str, Any] | None = None
        self._stop = False
        self._diverged = False
        self._version = 0
        self._window_start = time.monotonic()
        self._throughput = 0.0
        self._layer_stats: tuple[LayerStats, ...] = ()
        self._layers_at = 0.0
        self._reported_ranks: dict[str, int] = {}
        self._spectra_interval = SPECTRA_INTERVAL_S
        self._latest = Snapshot(preset=config.name, method=config.method_label, dataset=config.dataset,
                                model=config.model, run_dir=str(self.run_dir), epochs=config.epochs,
                                tau=config.tau, theta=config.truncate_theta, lr=config.lr)

    # -- public, thread-safe -------------------------------------------------------------------
    def setup(self) -> "Engine":
        """Load everything the run needs; raises CheckpointError or CannotStart (no data set, no such
        device, settings this model cannot take). The checkpoint of a resumed run is read first, so
        a corrupt one is reported before the data set loads.

        A resumed run trains with the hyperparameters of its checkpoint (RESTORED_ON_RESUME: τ, the
        learning rate, θ, … as last set live or by the schedule), except those the resume sets:
        ``resume_settings`` (--set) and any whose value in the config differs from the config saved
        with the checkpoint (config.toml edited, or a --set seen only through it)."""
        device = self.ranks.place(resolve_device(self.config.device))
        if self.resume_requested:
            self._resume_payload = self.recorder.load_checkpoint(device)
        data = load_run_data(self.config, device)
        try:
            trainer = Trainer(self.config, data, device, self.ranks)
            if self._resume_payload is not None:
                self._restore(trainer, self._resume_payload)
        except ValueError as error:  # a setting this model cannot take (the message names it)
            raise CannotStart(f"{self.config.name}: {error}") from None
        self.device_name = describe_device(device)
        self.trainer = trainer
        self._reported_ranks = trainer.adaptation.ranks() if trainer.adaptation is not None else {}
        return self

    def _restore(self, trainer: Trainer, payload: dict[str, Any]) -> None:
        warnings = trainer.load_state_dict(payload, str(self.recorder.checkpoint_path))
        saved, current = payload.get("config", {}), self.config.to_dict()
        keys = self.resume_settings | {key for key in RESTORED_ON_RESUME if key in saved and saved[key] != current[key]}
        changes = trainer.set_restored(self.config, keys)
        self._resume_notes = [("warning", warning) for warning in warnings]
        lost = [e.message for e in self._events_since_checkpoint(payload["step"]) if e.kind == "applied"]
        if lost:  # an engine that died after them: the checkpoint predates them
            listed = "; ".join(lost[:5]) + (f"; and {len(lost) - 5} more" if len(lost) > 5 else "")
            self._resume_notes.append(("warning", f"resumed from the checkpoint at step {payload['step']}: "
                                                  f"{len(lost)} change(s) applied after it are not in it "
                                                  f"({listed}); set them again if they still apply"))
        if changes:
            self._resume_notes.append(("info", f"set on resume: {', '.join(changes)}"))

    def _events_since_checkpoint(self, step: int) -> list[Event]:
        """The events recorded after the checkpoint at ``step`` was written (by the seq of its
        event: a command at the same step after it counts, one of an abandoned later history
        that an earlier resume replaced does not)."""
        events = self.recorder.recent_events()
        written = [i for i, e in enumerate(events) if e.kind == "checkpoint" and e.step == step]
        return events[written[-1] + 1:] if written else []

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name=f"rlr-engine-{self.config.name}", daemon=True)
        self._thread.start()
        return self

    def send(self, command: Command, request_id: str = "", session: int = ENGINE_SESSION) -> None:
        """Queue a command; it is applied at the next step boundary and acknowledged."""
        self._requests.put(_Request(command, request_id, session))

    def latest(self) -> Snapshot:
        return self._latest

    @property
    def method_label(self) -> str:
        """The method with the τ (and β) it trains with now: after ``setup()`` of a resumed run,
        the checkpoint's (set live since the start), not the preset's."""
        trainer = self.trainer
        if trainer is None:
            return self.config.method_label
        return method_label(self.config.method, trainer.tau, trainer.beta or 0.0)

    def log_event(self, kind: str, message: str) -> None:
        """Record an event from another thread (the control server reporting a bad client)."""
        self._event(kind, message)

    def recent_events(self) -> list[Event]:
        return self.recorder.recent_events()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask for a clean stop (final checkpoint) and wait for it."""
        self.send(Stop())
        return self.join(timeout)

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.trainer is None:
                self._publish()
                self.setup()
            self._begin()
            self._loop()
            self._finish()
        except (CannotStart, CheckpointError) as error:
            self._fail(str(error))
        except Exception as error:  # report, never die silently
            log = self.run_dir / ERROR_LOG
            try:
                log.write_text(traceback.format_exc(), encoding="utf-8")
            except OSError:
                pass
            self._fail(f"{type(error).__name__}: {error} (traceback in {log})")
        finally:
            self.recorder.close()

    def _fail(self, message: str) -> None:
        self.state, self.message = "failed", message
        self._event("error", message)
        if self.run_dir.is_dir():
            try:
                self.recorder.write_summary("failed", self.method_label, self._tau(), {"steps": self._step(), "error": message})
            except OSError:
                pass
        self._publish()

    def _begin(self) -> None:
        trainer = self.trainer
        if self._resume_payload is not None:
            self.recorder.restore(self._resume_payload, trim=True)
            self.recorder.clear_summary()
            self._resume_payload = None
        self._reset_window()
        self._layer_stats = trainer.layer_stats()
        self._layers_at = time.monotonic()
        self.state = "running"
        self._event("info", f"{'resumed' if self.resume_requested else 'started'} {self.config.name} "
                            f"({self.method_label}) on {self.device_name} at step {trainer.step}")
        for kind, message in self._resume_notes:
            self._event(kind, message)

    def _loop(self) -> None:
        trainer = self.trainer
        while True:
            self._apply_commands(block=self.state == "paused")
            if self._stop:
                return
            if self.state == "paused":
                continue
            if trainer.done:
                return
            if not trainer.train_step():
                self._flush_window()
                self._check_finite()
                self._publish()
                continue
            if trainer.rank_changes:
                self._report_rank_changes()
            if trainer.epoch_complete:
                self._end_epoch()
            self._maybe_publish()

    def _end_epoch(self) -> None:
        config, trainer = self.config, self.trainer
        trainer.end_epoch()
        self._flush_window()
        if self._check_finite():
            return
        epoch = trainer.epoch
        last = epoch >= config.epochs or trainer.done
        if config.truncate_every and epoch % config.truncate_every == 0 and config.is_low_rank:
            self.truncate(None, None, None, scheduled=True)
        if (config.eval_every and epoch % config.eval_every == 0) or last:
            self._evaluate()
        if config.attack_every and epoch % config.attack_every == 0 and not last:
            self.attack(config.attack_spec(), full=False)
        if config.checkpoint_every and epoch % config.checkpoint_every == 0:
            self.checkpoint()

    def _finish(self) -> None:
        trainer = self.trainer
        self._flush_window()
        if self._stop:
            self.checkpoint()
            self.state = "stopped"
            self.recorder.write_summary("stopped", self.method_label, trainer.tau, self._facts())
            self._event("info", f"stopped at step {trainer.step}; resume with: rlr train --resume {self.run_dir}")
        else:
            if trainer.position:  # max_steps ended the run mid-epoch
                self._evaluate()
            result = self.attack(self.config.attack_spec(), full=True)
            if self.recorder.last_checkpoint_step != trainer.step:
                self.checkpoint()
            self.state = "finished"
            self.recorder.write_summary("finished", self.method_label, trainer.tau, {
                **self._facts(), "attack": result.attack, "eps": list(result.eps),
                "adversarial_accuracy": list(result.accuracy)})
            self._event("info", f"finished after {trainer.step} steps")
        self._publish()

    def _facts(self) -> dict[str, Any]:
        trainer, report = self.trainer, self.trainer.report
        if trainer.at_window_boundary:
            self._layer_stats = trainer.layer_stats()  # the run's final ranks and κ
        return {"steps": trainer.step, "total_steps": trainer.total_steps, "epochs": trainer.epoch, "rank_fraction": report.rank_fraction,
                "params": report.params, "dense_params": report.dense_params, "compression": report.compression,
                "layers": [{"name": s.name, "rank": s.rank, "full_rank": s.full_rank, "kappa": s.kappa}
                           for s in self._layer_stats]}

    # -- what the handlers and the loop do -------------------------------------------------------
    def _condition_for_measuring(self) -> None:
        """What is evaluated, attacked or saved of a condlr-adaptive run has κ(S) ≤ 1 + τ."""
        self.trainer.condition_for_measuring()
        if self.trainer.rank_changes:
            self._report_rank_changes()

    def _report_rank_changes(self) -> None:
        """One event per window that changed ranks (a summary, not a line per layer). A rank is
        compared with the one last reported, not with the augmented rank the truncation started
        from: a window that grows r to 2r and cuts back to r changed nothing."""
        trainer = self.trainer
        moves = [f"{c.layer} {c.old_rank}→{c.new_rank}" for c in self._against_reported(trainer.take_rank_changes())
                 if c.new_rank != c.old_rank]
        if not moves:
            return
        self._event("truncation", f"window ended: {', '.join(moves)}; {trainer.report.compression:.1%} of the parameters "
                                  f"removed")
        # Spectra are stale: the next snapshot at a window boundary reads them (not here, every
        # window of the training loop; the compression figure is already current).
        self._layers_at = -math.inf

    def _against_reported(self, changes: list[RankChange]) -> list[RankChange]:
        """A rank-adaptive run's changes with each old rank the one last reported (shown), not the
        augmented rank its truncation started from; the new ranks become the reported ones."""
        rebased = []
        for change in changes:
            rebased.append(replace(change, old_rank=self._reported_ranks.get(change.layer, change.old_rank)))
            self._reported_ranks[change.layer] = change.new_rank
        return rebased

    def _evaluate(self) -> None:
        trainer = self.trainer
        self._condition_for_measuring()
        val_loss, val_acc, test_acc = trainer.evaluate()
        if trainer.at_window_boundary:
            self._layer_stats = trainer.layer_stats()
        self.recorder.evaluation(trainer.step, trainer.epoch, val_loss, val_acc, test_acc, self._layer_stats,
                                 trainer.report.compression)

    def attack(self, spec: AttackSpec, full: bool) -> AttackResult:
        trainer = self.trainer
        self._condition_for_measuring()
        accuracy, samples = trainer.attack(spec, full)
        result = AttackResult(trainer.step, trainer.epoch, spec.name, tuple(spec.eps), accuracy)
        self.recorder.attack(result, samples)
        self._publish()
        return result

    def truncate(self, theta: float | None, rank: int | None, layer: str | None, scheduled: bool) -> str:
        theta, changes = self.trainer.truncate(theta, rank, layer)
        if self.trainer.adaptation is not None:  # mid-window ranks are augmented
            changes = self._against_reported(changes)
        changed = [c for c in changes if c.new_rank != c.old_rank]
        what = "scheduled truncation" if scheduled else "truncation"
        rule = f"θ = {theta:g}" if theta is not None else f"rank {rank}"
        step = self.trainer.step
        if not changed:
            self._event("truncation", f"{what} ({rule}): no rank changed")
        for change in changed:
            self._event("truncation", f"{change.layer}: rank {change.old_rank} → {change.new_rank} "
                                      f"(‖ΔW‖_F = {change.discarded_norm:.3g})")
        self._layer_stats = self.trainer.layer_stats()
        return f"{what} ({rule}) at step {step}: {len(changed)} layer(s) changed rank"

    def pause(self) -> None:
        self.state = "paused"
        self._flush_window()

    def resume(self) -> bool:
        """Leave the paused state; after a divergence, roll back to the last good checkpoint
        first (keeping the τ and learning rate set since). True when it rolled back."""
        rolled_back = False
        if self._diverged:
            trainer = self.trainer
            if not self.recorder.checkpoint_path.is_file():
                raise ValueError("training diverged and there is no good checkpoint to roll back to; "
                                 "stop and start again with a lower learning rate")
            tau, lr = trainer.tau, trainer.lr
            payload = self.recorder.load_checkpoint(trainer.device)
            trainer.load_state_dict(payload, str(self.recorder.checkpoint_path))
            self.recorder.restore(payload, trim=False)
            trainer.set_tau(tau)
            trainer.set_lr(lr)
            self._diverged = False
            rolled_back = True
        self.state = "running"
        self._reset_window()
        return rolled_back

    def record_note(self, level: str, message: str) -> None:
        """A dashboard's note (a value it rejected, a screenshot it saved) in the run's events."""
        self._event(level, f"dashboard: {message}")

    def request_stop(self) -> None:
        self._stop = True

    def exclude_from_window(self, seconds: float) -> None:
        """Time spent on something else (an attack) does not count against the training rate."""
        self._window_start += seconds

    def checkpoint(self) -> bool:
        """Save the run; the curves it saves (and metrics.jsonl) hold every step it has trained,
        so a resume from it shows no gap."""
        trainer = self.trainer
        self._flush_window()
        self._condition_for_measuring()
        if self._diverged or not trainer.parameters_finite():
            self._event("warning", "checkpoint skipped: the model holds non-finite values")
            return False
        self.recorder.save_checkpoint(trainer.state_dict(), self.config)
        return True

    # -- commands ------------------------------------------------------------------------------
    def _take_requests(self, block: bool) -> list[_Request]:
        """Everything queued; with ``block``, wait up to 0.2 s for the first request."""
        requests = []
        while True:
            try:
                requests.append(self._requests.get(timeout=0.2) if block else self._requests.get_nowait())
            except queue.Empty:
                return requests
            block = False

    def _exchange(self, block: bool) -> list[_Request]:
        """torch.distributed: rank 0's requests, applied by every rank at the same boundary."""
        exchange = self.boundary.exchange(self.trainer, self._take_requests, self._snapshot_due, block)
        if exchange is None:
            return []
        for warning in exchange.warnings:
            self._event("warning", warning)
        self._flush_due = exchange.flush
        return [_Request(*request) for request in exchange.requests]

    def _apply_commands(self, block: bool) -> None:
        requests = self._take_requests(block) if self.boundary is None else self._exchange(block)
        for request in requests:
            command = request.command
            handler = HANDLERS.get(type(command))
            try:
                if handler is None:
                    raise ValueError(f"unknown command {command!r}")
                applied = handler(self, command)
            except (ValueError, TypeError) as error:
                self._event("rejected", f"{command.kind}: {error}")
                self._acknowledge(request, "rejected", str(error))
            else:
                if not isinstance(command, Note):  # a note is an event already
                    self._event("applied", applied)
                self._acknowledge(request, "applied", applied)
            self._publish(with_layers=isinstance(command, CHANGES_LAYERS))

    def _acknowledge(self, request: _Request, status: str, message: str) -> None:
        ack = Ack(request.request_id, request.session, request.command.kind, status, message)
        self.acks.append(ack)
        if self.listener is not None:
            self.listener.ack(ack)

    # -- divergence ----------------------------------------------------------------------------
    def _check_finite(self) -> bool:
        """True (and paused) when a non-finite loss or weight appeared since the last check."""
        if self.trainer.take_finite():
            return False
        self._diverged = True
        self.state = "paused"
        last = self.recorder.last_checkpoint_step
        where = (f"the last good checkpoint (step {last}) is kept" if last is not None
                 else "no checkpoint was written yet")
        self._event("error", f"non-finite loss near step {self.trainer.step}: training paused; {where}. "
                             f"Lower the learning rate and resume to roll back.")
        self._reset_window()
        return True

    # -- snapshots -----------------------------------------------------------------------------
    def _event(self, kind: str, message: str) -> None:
        self.recorder.event(self._step(), kind, message)

    def _tell_listener(self, event: Event) -> None:
        """Every event the recorder records — the engine's own and the recorder's (evaluation,
        attack, checkpoint) — reaches attached dashboards."""
        if self.listener is not None:
            self.listener.event(event)

    def _step(self) -> int:
        return self.trainer.step if self.trainer is not None else 0

    def _tau(self) -> float:
        return self.trainer.tau if self.trainer is not None else self.config.tau

    def _reset_window(self) -> None:
        if self.trainer is not None and self.trainer.window_samples:
            self.trainer.read_window()  # discard: these steps are not timed
        self._window_start = time.monotonic()

    def _flush_window(self) -> None:
        """Read the device-side training window (one host sync) into the curves and the log."""
        trainer = self.trainer
        if not trainer.window_samples:
            self._window_start = time.monotonic()
            return
        elapsed = max(time.monotonic() - self._window_start, 1e-9)
        loss, acc, n = trainer.read_window()
        self._throughput = n / elapsed
        self.recorder.train_window(trainer.step, trainer.epoch, loss, acc, trainer.lr, trainer.tau,
                                   self._throughput, elapsed)
        self._window_start = time.monotonic()

    def _snapshot_due(self) -> bool:
        return time.monotonic() - self._window_start >= self.config.snapshot_interval

    def _maybe_publish(self) -> None:
        now = time.monotonic()
        # Under torch.distributed reading the window is a collective: rank 0 decides, at a boundary.
        due = self._snapshot_due() if self.boundary is None else self._flush_due
        self._flush_due = False
        if due:
            self._flush_window()
            if self._check_finite():
                self._publish()
                return
            self._publish(with_layers=now - self._layers_at >= self._spectra_interval
                          and self.trainer.at_window_boundary)

    def _publish(self, with_layers: bool = False) -> None:
        trainer = self.trainer
        if trainer is not None and with_layers:
            started = time.monotonic()
            self._layer_stats = trainer.layer_stats()
            self._layers_at = time.monotonic()
            # SVDs of large dense weights are not free: space them so they take ≤ 1 % of the time.
            self._spectra_interval = max(SPECTRA_INTERVAL_S, 100 * (self._layers_at - started))
            self.recorder.spectra(trainer.step, self._layer_stats)
        recorder, stats = self.recorder, self._layer_stats
        running = self.state == "running"
        # While paused (or after the end) there is no current rate, hence no ETA.
        rate = self._throughput if running else 0.0
        eta = None
        if trainer is not None and running and rate > 0:
            eta = max(trainer.total_steps - trainer.step, 0) * self.config.batch_size / rate
        self._version += 1
        changes: dict[str, Any] = dict(
            state=self.state, message=self.message, device=self.device_name, samples_per_s=rate, eta_s=eta,
            curves={name: series.points() for name, series in recorder.curves.items()},
            adversarial=recorder.attack_history[-1] if recorder.attack_history else None,
            adversarial_history=tuple(recorder.attack_history), events=tuple(recorder.recent_events()),
            last_checkpoint_step=recorder.last_checkpoint_step, version=self._version, **recorder.last_values)
        if trainer is not None:
            report = trainer.report
            changes.update(
                method=self.method_label, step=trainer.step,
                epoch=trainer.epoch, total_steps=trainer.total_steps, tau=trainer.tau, theta=trainer.theta,
                lr=trainer.lr, beta=trainer.beta, adapt_every=trainer.adapt_every, layers=stats,
                params=report.params, dense_params=report.dense_params, compression=report.compression,
                rank_fraction=report.rank_fraction)
        self._latest = replace(self._latest, **changes)
