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
from rlr_engine.core.validation import NumberRange, shown
from rlr_engine.run.boundary import StepBoundary
from rlr_engine.run.command_intake import CommandIntake, Request
from rlr_engine.run.distributed import Ranks
from rlr_engine.run.divergence import Divergence
from rlr_engine.run.publisher import Publisher
from rlr_engine.run.recorder import Recorder
from rlr_engine.run.schedule import epoch_end
from rlr_engine.run.set_up import set_up
from rlr_engine.run.steering import Steering
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
        self.steering: Steering | None = None
        self.device_name = ""
        self.state = "starting"
        self.message = ""
        self._resume_payload: dict[str, Any] | None = None
        self._resume_notes: list[tuple[str, str]] = []
        self.divergence = Divergence(recorder, self.event)
        self._stop = False
        self._pause_at: int | None = None
        self._flush_due = False

    # -- setting up -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Load everything the run needs (see set_up.set_up); writes nothing."""
        ready = set_up(self.config, self.ranks, self.recorder, self.resume_requested, self.resume_settings)
        self.trainer, self.device_name = ready.trainer, ready.device_name
        self._resume_payload, self._resume_notes = ready.resume_payload, ready.resume_notes
        self.steering = Steering.of_run(
            ready.trainer, self.publisher, self.event, self.run_dir, self.ranks.distributed, self.resume_requested
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
        self._steer.forget()  # what a killed engine left to undo
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
        if not self.resume_requested:
            self._report_start(trainer)

    def _report_start(self, trainer: Trainer) -> None:
        """What a new run's network started from (weights, warm start, conversion) and the input
        normalisation measured for it, as events: the run's record of how it began."""
        data = trainer.data
        if data.normalization_measured and data.mean is not None and data.std is not None:
            self.event(
                "info",
                f"input normalisation measured on the training split ({len(data.train)} images): "
                f"mean {_rounded(data.mean)}, std {_rounded(data.std)} (set mean and std to fix them)",
            )
        for note in trainer.build_notes:
            self.event("info", note)

    def _loop(self) -> None:
        trainer = self._trainer
        while True:
            self._pause_if_reached()
            paused = self.state == "paused"
            self._flush_due = self.intake.apply(self, self._trainer, paused, self.publisher.snapshot_due)
            if self._stop:
                return
            if self.state == "paused":
                continue
            if trainer.done:
                return
            stepped = trainer.train_step()
            for note in trainer.take_forward_notes():
                self.event("info", note)
            if not stepped:
                self.publisher.flush_window(trainer)
                self._check_finite()
                self.publish()
                continue
            if trainer.rank_changes:
                self._steer.report_rank_changes()
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
        self._steer.forget()
        if self._stop:
            self.checkpoint()
            self.state = "stopped"
            self.recorder.write_summary("stopped", self.method_label, trainer.tau, self.publisher.final_facts(trainer))
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
                    **self.publisher.final_facts(trainer),
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
        readable = not self.divergence.diverged and trainer.parameters_finite()
        self.publish(with_layers=trainer.at_window_boundary and readable)

    def fail(self, message: str) -> None:
        """End the run as failed with ``message`` (an error the thread met)."""
        self.state, self.message = "failed", message
        self.event("error", message)
        if self.steering is not None:
            self.steering.forget()
        if self.run_dir.is_dir():
            try:
                tau = self.trainer.tau if self.trainer is not None else self.config.tau
                self.recorder.write_summary("failed", self.method_label, tau, {"steps": self.step, "error": message})
            except OSError:
                pass
        self.publish()

    # -- what the run reports ---------------------------------------------------------------------
    @property
    def _trainer(self) -> Trainer:
        assert self.trainer is not None, "the run is not set up"
        return self.trainer

    @property
    def _steer(self) -> Steering:
        assert self.steering is not None, "the run is not set up"
        return self.steering

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
        self._steer.set_tau(tau)

    def set_lr(self, lr: float) -> None:
        self._steer.set_lr(lr)

    def set_adaptation(self, beta: float | None, adapt_every: int | None) -> None:
        self._steer.set_adaptation(beta, adapt_every)

    def truncate(self, theta: float | None, rank: int | None, layer: str | None, scheduled: bool) -> str:
        return self._steer.truncate(theta, rank, layer, scheduled)

    def undo(self) -> str:
        message = self._steer.undo()
        self.divergence.recovered(self._trainer)
        return message

    def _condition_for_measuring(self) -> None:
        """What is evaluated, attacked or saved of a condlr-adaptive run has κ(S) ≤ 1 + τ."""
        self._trainer.condition_for_measuring()
        if self._trainer.rank_changes:
            self._steer.report_rank_changes()

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

    def pause(self) -> None:
        self.state = "paused"
        self.publisher.flush_window(self._trainer)

    def pause_at(self, step: int) -> None:
        """Pause once the run reaches ``step`` (replacing an earlier such request): at the top of
        the loop, after that step's epoch end, before the commands queued meanwhile are applied.
        Every rank of a data-parallel run pauses at the same step. ValueError, changing nothing,
        unless ``step`` is past the current step and at most the run's last."""
        allowed = NumberRange(self.step + 1, self._trainer.total_steps)
        if isinstance(step, bool) or not isinstance(step, int) or step not in allowed:
            raise ValueError(
                f"pause.at_step = {shown(step)} is not allowed: the run is at step {self.step}; "
                f"expected {allowed.allowed('an integer')}"
            )
        self._pause_at = step

    def _pause_if_reached(self) -> None:
        if self._pause_at is None or self.step < self._pause_at:
            return
        self._pause_at = None
        if self.state == "running":
            self.pause()
            self.event("info", f"paused at step {self.step}, as asked")
            self.publish()

    def resume(self) -> bool:
        """Leave the paused state; after a divergence, roll back to the last good checkpoint
        first (divergence.py). True when it rolled back."""
        rolled_back = self.divergence.roll_back(self._trainer)
        self.state = "running"
        self.publisher.reset_window(self.trainer)
        return rolled_back

    def checkpoint(self) -> bool:
        """Save the run; the curves it saves (and metrics.jsonl) hold every step it has trained,
        so a resume from it shows no gap."""
        trainer = self._trainer
        self.publisher.flush_window(trainer)
        self._condition_for_measuring()
        if self.divergence.diverged or not trainer.parameters_finite():
            self.event("warning", "checkpoint skipped: the model holds non-finite values")
            return False
        self.recorder.save_checkpoint(trainer.state_dict(), self.config)
        return True

    def record_note(self, level: str, message: str) -> None:
        """A dashboard's note (a value it rejected, a screenshot it saved) in the run's events."""
        self.event(level, f"dashboard: {message}")

    def request_stop(self) -> None:
        self._stop = True

    def _check_finite(self) -> bool:
        """True (and paused) when a non-finite loss or weight appeared since the last check."""
        if not self.divergence.check(self._trainer):
            return False
        self.state = "paused"
        self.publisher.reset_window(self.trainer)
        return True


def _rounded(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
