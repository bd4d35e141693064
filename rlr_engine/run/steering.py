"""Live changes to a run's model and hyperparameters — τ, learning rate, β and the window, a
truncation and its θ — as commands ask for them, each remembered so that ``undo`` can take it
back (undo.py), and the events that report rank changes. Runs on the engine thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rlr_engine.control.run_files import UNDO
from rlr_engine.run.publisher import Publisher
from rlr_engine.run.rank_reports import RankReports
from rlr_engine.run.trainer import Trainer
from rlr_engine.run.undo import UndoHistory

UNDOABLE = "truncation, τ, lr, θ or β change"
# Each process of a data-parallel run would have to keep and restore its own copy, in step with
# the others: not done.
NO_UNDO_DATA_PARALLEL = "undo is not available in a data-parallel run (--nproc); it is in a one-process run"


class Steering:
    """What commands change in a set-up run.

    Args:
        trainer: the run's Trainer.
        publisher: refreshes the layer spectra a change makes stale.
        event: ``event(kind, message)`` records an event of the run.
        history: the undo history; None where undo is not available (``unavailable`` says why).
        since: what the history starts from, for the refusal of an undo with nothing to undo
            ("the run started", "the run resumed at step 340").
    """

    def __init__(
        self,
        trainer: Trainer,
        publisher: Publisher,
        event: Callable[[str, str], None],
        history: UndoHistory | None,
        unavailable: str = "",
        since: str = "the run started",
    ) -> None:
        self.trainer = trainer
        self.publisher = publisher
        self.event = event
        self.history = history
        self.unavailable = unavailable
        self.since = since
        self.rank_reports = self._reported_ranks()

    @classmethod
    def of_run(
        cls,
        trainer: Trainer,
        publisher: Publisher,
        event: Callable[[str, str], None],
        run_dir: Path,
        distributed: bool,
        resumed: bool,
    ) -> Steering:
        """The steering of a run just set up in ``run_dir`` (resumed or not): undo in a one-process
        run, with its history's spill files in the run directory."""
        if distributed:
            return cls(trainer, publisher, event, None, unavailable=NO_UNDO_DATA_PARALLEL)
        since = (
            f"the run resumed at step {trainer.step} (changes from before a resume are not kept)"
            if resumed
            else "the run started"
        )
        return cls(trainer, publisher, event, UndoHistory(run_dir / UNDO), since=since)

    def _reported_ranks(self) -> RankReports:
        adaptation = self.trainer.adaptation
        return RankReports(adaptation.ranks() if adaptation is not None else {})

    @contextmanager
    def _undoable(self, describe: Callable[[], str]) -> Iterator[None]:
        """Remember the state from before the change made in the block, labelled ``describe()``
        once it is made; a change that raises (rejected) is not remembered."""
        before = self.trainer.steering_state() if self.history is not None else None
        yield
        if self.history is not None and before is not None:
            self.history.remember(describe(), self.trainer.step, before)

    # -- changes ----------------------------------------------------------------------------------
    def set_tau(self, tau: float) -> None:
        old = self.trainer.tau
        with self._undoable(lambda: f"τ {old:g} → {self.trainer.tau:g}"):
            self.trainer.set_tau(tau)

    def set_lr(self, lr: float) -> None:
        old = self.trainer.lr
        with self._undoable(lambda: f"learning rate {old:g} → {self.trainer.lr:g}"):
            self.trainer.set_lr(lr)

    def set_adaptation(self, beta: float | None, adapt_every: int | None) -> None:
        trainer = self.trainer
        old_beta, old_window = trainer.beta, trainer.adapt_every

        def describe() -> str:
            parts = [f"β {old_beta:g} → {trainer.beta:g}"] if beta is not None else []
            return ", ".join(parts + ([f"window {old_window} → {trainer.adapt_every}"] if adapt_every else []))

        with self._undoable(describe):
            trainer.set_adaptation(beta=beta, adapt_every=adapt_every)

    def truncate(self, theta: float | None, rank: int | None, layer: str | None, scheduled: bool) -> str:
        """Truncate (a command, or the schedule: ``scheduled``, which is not remembered for undo)."""
        trainer = self.trainer
        used: list[float | None] = []  # the θ the truncation used, once it is made

        def rule() -> str:
            return f"θ = {used[0]:g}" if used[0] is not None else f"rank {rank}"

        with nullcontext() if scheduled else self._undoable(lambda: f"the truncation ({rule()})"):
            theta, changes = trainer.truncate(theta, rank, layer)
            used.append(theta)
        if trainer.adaptation is not None:  # mid-window ranks are augmented
            changes = self.rank_reports.rebase(changes)
        changed = [c for c in changes if c.new_rank != c.old_rank]
        what = "scheduled truncation" if scheduled else "truncation"
        if not changed:
            self.event("truncation", f"{what} ({rule()}): no rank changed")
        for change in changed:
            self.event(
                "truncation",
                f"{change.layer}: rank {change.old_rank} → {change.new_rank} (‖ΔW‖_F = {change.discarded_norm:.3g})",
            )
        self.publisher.refresh_layers(trainer)
        return f"{what} ({rule()}) at step {trainer.step}: {len(changed)} layer(s) changed rank"

    def undo(self) -> str:
        """Bring back the state from before the newest remembered change; ValueError (nothing
        changes) when there is none."""
        if self.history is None:
            raise ValueError(self.unavailable)
        if not len(self.history):
            if self.history.dropped:
                raise ValueError(f"nothing more to undo: only the last {self.history.depth} changes are kept")
            raise ValueError(f"nothing to undo: no {UNDOABLE} since {self.since}")
        entry = self.history.take()
        assert entry.state is not None
        trainer = self.trainer
        ranks = {s.name: s.rank for s in self.publisher.layer_stats}
        trainer.restore_steering_state(entry.state)
        self.rank_reports = self._reported_ranks()
        self.publisher.refresh_layers(trainer)
        moved = [
            f"{layer.name} {ranks[layer.name]}→{layer.rank}"
            for layer in self.publisher.layer_stats
            if ranks.get(layer.name, layer.rank) != layer.rank
        ]
        back = f"; ranks {', '.join(moved)}" if moved else ""
        return (
            f"undid {entry.label} (made at step {entry.step}): the weights and optimizer state from before it "
            f"are back, training goes on at step {trainer.step}{back}"
        )

    def forget(self) -> None:
        """Nothing done so far can be undone (the engine begins, or the run ends)."""
        if self.history is not None:
            self.history.clear()

    def report_rank_changes(self) -> None:
        """One event per window that changed ranks (a summary, not a line per layer)."""
        trainer = self.trainer
        moves = [
            f"{c.layer} {c.old_rank}→{c.new_rank}"
            for c in self.rank_reports.rebase(trainer.take_rank_changes())
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
