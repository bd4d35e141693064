"""The engine loop: what the engine thread does with a Trainer — train, apply commands between
steps, end epochs and the run, publish snapshots. Everything here runs on the engine thread;
``engine.Engine`` is the thread-safe surface around it.

States: starting → running ⇄ paused → finished | stopped | failed.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlr_engine.control.records import AttackResult
from rlr_engine.core.config import AttackSpec, RunConfig, method_label
from rlr_engine.run.boundary import StepBoundary
from rlr_engine.run.command_intake import CommandIntake, Request
from rlr_engine.run.distributed import Ranks
from rlr_engine.run.publisher import Publisher
from rlr_engine.run.rank_reports import RankReports
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.schedule import epoch_end
from rlr_engine.run.set_up import set_up
from rlr_engine.run.trainer import Trainer


class RunLoop:
    """One run on the engine thread. It is the ``RunControl`` its command handlers act on.

    ``requests`` is the queue the thread-safe side fills; ``acknowledge(request, status,
    message)`` reports each command's outcome (command_intake.py)."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        recorder: Recorder,
        ranks: Ranks,
        resume: bool,
        resume_settings: Iterable[str],
        requests: queue.Queue[Request],
        acknowledge: Callable[[Request, str, str], None],
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.recorder = recorder
        self.ranks = ranks
        self.resume_requested = resume
        self.resume_settings = frozenset(resume_settings)
        self.boundary = StepBoundary(ranks) if ranks.distributed else None
        self.intake = CommandIntake(requests, self.boundary, acknowledge, self.event, self.publish)
        self.publisher = Publisher(config, recorder, str(run_dir))
        self.trainer: Trainer | None = None
        self.device_name = ""
        self.state = "starting"
        self.message = ""
        self._resume_payload: dict[str, Any] | None = None
        self._resume_notes: list[tuple[str, str]] = []
        self._rank_reports = RankReports({})
        self._stop = False
        self._diverged = False
        self._flush_due = False

    # -- setting up -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Load everything the run needs (see set_up.set_up); writes nothing."""
        ready = set_up(self.config, self.ranks, self.recorder, self.resume_requested, self.resume_settings)
        self.trainer, self.device_name = ready.trainer, ready.device_name
        self._resume_payload, self._resume_notes = ready.resume_payload, ready.resume_notes
        self._rank_reports = RankReports(
            ready.trainer.adaptation.ranks() if ready.trainer.adaptation is not None else {}
        )

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Set up (unless done), train to the end or a stop, and finish."""
        if self.trainer is None:
            self.publish()
            self.setup()
        self._begin()
        self._loop()
        self._finish()

    def _begin(self) -> None:
        trainer = self._trainer
        if self._resume_payload is not None:
            self.recorder.restore(self._resume_payload, trim=True)
            self.recorder.clear_summary()
            self._resume_payload = None
        self.publisher.reset_window(trainer)
        self.publisher.refresh_layers(trainer)
        self.state = "running"
        self.event(
            "info",
            f"{'resumed' if self.resume_requested else 'started'} {self.config.name} "
            f"({self.method_label}) on {self.device_name} at step {trainer.step}",
        )
        for kind, message in self._resume_notes:
            self.event(kind, message)

    def _loop(self) -> None:
        trainer = self._trainer
        while True:
            paused = self.state == "paused"
            self._flush_due = self.intake.apply(self, self._trainer, paused, self.publisher.snapshot_due)
            if self._stop:
                return
            if self.state == "paused":
                continue
            if trainer.done:
                return
            if not trainer.train_step():
                self.publisher.flush_window(trainer)
                self._check_finite()
                self.publish()
                continue
            if trainer.rank_changes:
                self._report_rank_changes()
            if trainer.epoch_complete:
                self._end_epoch()
            self._maybe_publish()

    def _end_epoch(self) -> None:
        trainer = self._trainer
        trainer.end_epoch()
        self.publisher.flush_window(trainer)
        if self._check_finite():
            return
        due = epoch_end(self.config, trainer.epoch, last=trainer.epoch >= self.config.epochs or trainer.done)
        if due.truncate:
            self.truncate(None, None, None, scheduled=True)
        if due.evaluate:
            self._evaluate()
        if due.attack:
            self.attack(self.config.attack_spec(), final=False)
        if due.checkpoint:
            self.checkpoint()

    def _finish(self) -> None:
        trainer = self._trainer
        self.publisher.flush_window(trainer)
        if self._stop:
            self.checkpoint()
            self.state = "stopped"
            self.recorder.write_summary("stopped", self.method_label, trainer.tau, self._facts())
            self.event("info", f"stopped at step {trainer.step}; resume with: rlr train --resume {self.run_dir}")
        else:
            if trainer.position:  # max_steps ended the run mid-epoch
                self._evaluate()
            result = self.attack(self.config.attack_spec(), final=True)
            if self.recorder.last_checkpoint_step != trainer.step:
                self.checkpoint()
            self.state = "finished"
            self.recorder.write_summary(
                "finished",
                self.method_label,
                trainer.tau,
                {
                    **self._facts(),
                    "attack": result.attack,
                    "eps": list(result.eps),
                    "adversarial_accuracy": list(result.accuracy),
                    "attack_samples": result.samples,
                    "attack_seed": result.seed,
                },
            )
            self.event("info", f"finished after {trainer.step} steps")
        # The spectra as the run ends, in the last snapshot and in TensorBoard, however short the
        # run was next to the spectra's cadence.
        self.publish(with_layers=trainer.at_window_boundary and not self._diverged and trainer.parameters_finite())

    def fail(self, message: str) -> None:
        """End the run as failed with ``message`` (an error the thread met)."""
        self.state, self.message = "failed", message
        self.event("error", message)
        if self.run_dir.is_dir():
            try:
                tau = self.trainer.tau if self.trainer is not None else self.config.tau
                self.recorder.write_summary("failed", self.method_label, tau, {"steps": self.step, "error": message})
            except OSError:
                pass
        self.publish()

    def _facts(self) -> dict[str, Any]:
        trainer, report = self._trainer, self._trainer.report
        if trainer.at_window_boundary:
            self.publisher.refresh_layers(trainer)  # the run's final ranks and κ
        return {
            "steps": trainer.step,
            "total_steps": trainer.total_steps,
            "epochs": trainer.epoch,
            "rank_fraction": report.rank_fraction,
            "params": report.params,
            "dense_params": report.dense_params,
            "compression": report.compression,
            "layers": [
                {"name": s.name, "rank": s.rank, "full_rank": s.full_rank, "kappa": s.kappa}
                for s in self.publisher.layer_stats
            ],
        }

    # -- what the run reports ---------------------------------------------------------------------
    @property
    def _trainer(self) -> Trainer:
        assert self.trainer is not None, "the run is not set up"
        return self.trainer

    @property
    def step(self) -> int:
        return self.trainer.step if self.trainer is not None else 0

    @property
    def method_label(self) -> str:
        """The method with the τ (and β) it trains with now: after ``setup()`` of a resumed run,
        the checkpoint's (set live since the start), not the preset's."""
        if self.trainer is None:
            return self.config.method_label
        return method_label(self.config.method, self.trainer.tau, self.trainer.beta or 0.0)

    def event(self, kind: str, message: str) -> None:
        self.recorder.event(self.step, kind, message)

    def publish(self, with_layers: bool = False) -> None:
        self.publisher.publish(self.trainer, self.state, self.message, self.method_label, self.device_name, with_layers)

    def _maybe_publish(self) -> None:
        # Under torch.distributed reading the window is a collective: rank 0 decides, at a boundary.
        due = self.publisher.snapshot_due() if self.boundary is None else self._flush_due
        self._flush_due = False
        if due:
            self.publisher.flush_window(self._trainer)
            if self._check_finite():
                self.publish()
                return
            self.publish(with_layers=self.publisher.layers_due(self._trainer))

    def _report_rank_changes(self) -> None:
        """One event per window that changed ranks (a summary, not a line per layer)."""
        trainer = self._trainer
        moves = [
            f"{c.layer} {c.old_rank}→{c.new_rank}"
            for c in self._rank_reports.rebase(trainer.take_rank_changes())
            if c.new_rank != c.old_rank
        ]
        if not moves:
            return
        self.event(
            "truncation",
            f"window ended: {', '.join(moves)}; {trainer.report.compression:.1%} of the parameters removed",
        )
        # Spectra are stale: the next snapshot at a window boundary reads them (not here, every
        # window of the training loop; the compression figure is already current).
        self.publisher.layers_stale()

    # -- RunControl: what commands (and the schedule) do ------------------------------------------
    @property
    def tau(self) -> float:
        return self._trainer.tau

    @property
    def lr(self) -> float:
        return self._trainer.lr

    @property
    def beta(self) -> float | None:
        return self._trainer.beta

    @property
    def adapt_every(self) -> int | None:
        return self._trainer.adapt_every

    def set_tau(self, tau: float) -> None:
        self._trainer.set_tau(tau)

    def set_lr(self, lr: float) -> None:
        self._trainer.set_lr(lr)

    def set_adaptation(self, beta: float | None, adapt_every: int | None) -> None:
        self._trainer.set_adaptation(beta=beta, adapt_every=adapt_every)

    def _condition_for_measuring(self) -> None:
        """What is evaluated, attacked or saved of a condlr-adaptive run has κ(S) ≤ 1 + τ."""
        self._trainer.condition_for_measuring()
        if self._trainer.rank_changes:
            self._report_rank_changes()

    def _evaluate(self) -> None:
        trainer = self._trainer
        self._condition_for_measuring()
        val_loss, val_acc, test_acc = trainer.evaluate()
        if trainer.at_window_boundary:
            self.publisher.refresh_layers(trainer)
        self.recorder.evaluation(
            trainer.step,
            trainer.epoch,
            val_loss,
            val_acc,
            test_acc,
            self.publisher.layer_stats,
            trainer.report.compression,
        )

    def attack(self, spec: AttackSpec, final: bool) -> AttackResult:
        """Attack the model as it is now, seeded from the run's seed and the step."""
        trainer = self._trainer
        self._condition_for_measuring()
        seed = self.config.attack_seed(trainer.step)
        accuracy, samples = trainer.attack(spec, final, seed)
        result = AttackResult(trainer.step, trainer.epoch, spec.name, tuple(spec.eps), accuracy, samples, seed)
        self.recorder.attack(result)
        self.publish()
        return result

    def attack_now(self, attack: str | None, eps: tuple[float, ...] | None) -> str:
        spec = self.config.attack_spec(attack, eps)
        started = time.monotonic()
        self.attack(spec, final=False)
        self.publisher.exclude_from_window(time.monotonic() - started)
        return f"attack {spec.name} at step {self.step}"

    def truncate(self, theta: float | None, rank: int | None, layer: str | None, scheduled: bool) -> str:
        trainer = self._trainer
        theta, changes = trainer.truncate(theta, rank, layer)
        if trainer.adaptation is not None:  # mid-window ranks are augmented
            changes = self._rank_reports.rebase(changes)
        changed = [c for c in changes if c.new_rank != c.old_rank]
        what = "scheduled truncation" if scheduled else "truncation"
        rule = f"θ = {theta:g}" if theta is not None else f"rank {rank}"
        if not changed:
            self.event("truncation", f"{what} ({rule}): no rank changed")
        for change in changed:
            self.event(
                "truncation",
                f"{change.layer}: rank {change.old_rank} → {change.new_rank} (‖ΔW‖_F = {change.discarded_norm:.3g})",
            )
        self.publisher.refresh_layers(trainer)
        return f"{what} ({rule}) at step {trainer.step}: {len(changed)} layer(s) changed rank"

    def pause(self) -> None:
        self.state = "paused"
        self.publisher.flush_window(self._trainer)

    def resume(self) -> bool:
        """Leave the paused state; after a divergence, roll back to the last good checkpoint
        first (keeping the τ and learning rate set since). True when it rolled back."""
        rolled_back = False
        if self._diverged:
            trainer = self._trainer
            if not self.recorder.checkpoint_path.is_file():
                raise ValueError(
                    "training diverged and there is no good checkpoint to roll back to; "
                    "stop and start again with a lower learning rate"
                )
            tau, lr = trainer.tau, trainer.lr
            payload = self.recorder.load_checkpoint(trainer.device)
            trainer.load_state_dict(payload, str(self.recorder.checkpoint_path))
            self.recorder.restore(payload, trim=False)
            trainer.set_tau(tau)
            trainer.set_lr(lr)
            self._diverged = False
            rolled_back = True
        self.state = "running"
        self.publisher.reset_window(self.trainer)
        return rolled_back

    def checkpoint(self) -> bool:
        """Save the run; the curves it saves (and metrics.jsonl) hold every step it has trained,
        so a resume from it shows no gap."""
        trainer = self._trainer
        self.publisher.flush_window(trainer)
        self._condition_for_measuring()
        if self._diverged or not trainer.parameters_finite():
            self.event("warning", "checkpoint skipped: the model holds non-finite values")
            return False
        self.recorder.save_checkpoint(trainer.state_dict(), self.config)
        return True

    def record_note(self, level: str, message: str) -> None:
        """A dashboard's note (a value it rejected, a screenshot it saved) in the run's events."""
        self.event(level, f"dashboard: {message}")

    def request_stop(self) -> None:
        self._stop = True

    # -- divergence -------------------------------------------------------------------------------
    def _check_finite(self) -> bool:
        """True (and paused) when a non-finite loss or weight appeared since the last check."""
        if self._trainer.take_finite():
            return False
        self._diverged = True
        self.state = "paused"
        last = self.recorder.last_checkpoint_step
        where = (
            f"the last good checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written yet"
        )
        self.event(
            "error",
            f"non-finite loss near step {self.step}: training paused; {where}. "
            f"Lower the learning rate and resume to roll back.",
        )
        self.publisher.reset_window(self.trainer)
        return True
