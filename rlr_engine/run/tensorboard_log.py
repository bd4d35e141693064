"""A run's metrics, spectra and events as TensorBoard event files (``runs/<id>/tensorboard/``),
written with torch's ``SummaryWriter`` when a run has ``tensorboard = true``.

The Recorder feeds it the plain records it appends to metrics.jsonl and events.jsonl, plus the
layer spectra at their own cadence; nothing here runs per training step, and the writing itself
happens on a thread of its own. TensorBoard is an optional extra, imported only by a run that asks
for it, so this module is torch-free.

Tags (each scalar's step is the record's training step):

  loss/train, loss/val                       train window / evaluation losses
  accuracy/train, accuracy/val, accuracy/test
  optimizer/lr, optimizer/tau                at every train window
  speed/samples_per_s                        training throughput of the window
  parameters/compression                     1 − params / dense params, at every evaluation
  rank/<layer>, kappa/<layer>, sigma_max/<layer>   at every evaluation
  adv/<attack>/<ε>                           adversarial accuracy, at every attack
  sigma/<layer>                              histogram of the layer's singular values (spectra cadence)
  events/<kind>                              text: what the user was told

A resumed run (or a rollback to the last good checkpoint) continues the same curves: the next
writer opens with ``purge_step`` one past the checkpoint's step, so TensorBoard drops whatever the
previous writer logged after it instead of showing those steps twice.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rlr_engine.control.metrics_table import flatten_record
from rlr_engine.control.records import Event, LayerStats
from rlr_engine.core.errors import PresetError
from rlr_engine.core.extras import installed, tensorboard_unavailable

# Event files reach the disk at least this often while a run lives; TensorBoard re-reads its
# logdir every few seconds.
FLUSH_SECONDS = 10
# Buckets of a σ histogram (a layer has at most a few hundred singular values).
HISTOGRAM_BINS = 30

SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "test_acc": "accuracy/test",
    "lr": "optimizer/lr",
    "tau": "optimizer/tau",
    "samples_per_s": "speed/samples_per_s",
    "compression": "parameters/compression",
}
NESTED_SCALAR_PREFIXES = ("rank/", "kappa/", "sigma_max/", "adv/")


def scalar_tag(column: str) -> str | None:
    """The TensorBoard tag of a metrics column (see metrics_table), None for what is not a curve
    (type, step, epoch, seconds, samples, attack, full_rank/…)."""
    if column in SCALAR_TAGS:
        return SCALAR_TAGS[column]
    return column if column.startswith(NESTED_SCALAR_PREFIXES) else None


def record_scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """(tag, value) of every curve point a metrics record holds."""
    points = []
    for column, value in flatten_record(record).items():
        tag = scalar_tag(column)
        if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            points.append((tag, float(value)))
    return points


class EventFileLike(Protocol):
    def add_scalars(self, step: int, points: list[tuple[str, float]]) -> None: ...

    def add_histograms(self, step: int, values_by_tag: dict[str, Any]) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...

    def close(self) -> None: ...


class EventFile:
    """One TensorBoard event file, written through torch's ``SummaryWriter``.

    Every record becomes one event: all the scalars of a metrics record share one ``Summary``
    (one value per tag), and all the layers' σ histograms of a spectrum another. SummaryWriter's
    own ``add_scalar``/``add_histogram`` write one event per tag, and its default histogram has
    TensorFlow's ~1,500 bucket edges; per event it builds, serialises and checksums a record (the
    tensorboard package without TensorFlow computes CRC32C in pure Python), which made the
    writing ~4× dearer. TensorBoard reads an event with several values like one per value."""

    def __init__(self, directory: Path, purge_step: int | None) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import histogram
        except ImportError as error:
            raise tensorboard_unavailable(str(error)) from None
        self.summary, self.histogram = Summary, histogram
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge_step, flush_secs=FLUSH_SECONDS)

    def add_scalars(self, step: int, points: list[tuple[str, float]]) -> None:
        self._add_event(step, [self.summary.Value(tag=tag, simple_value=value) for tag, value in points])

    def add_histograms(self, step: int, values_by_tag: dict[str, Any]) -> None:
        self._add_event(
            step,
            [
                value
                for tag, array in values_by_tag.items()
                for value in self.histogram(tag, array, bins=HISTOGRAM_BINS).value
            ],
        )

    def _add_event(self, step: int, values: list) -> None:
        """One event holding ``values`` (Summary.Value protos) at ``step``; none when empty."""
        if values:
            file_writer = self.writer.file_writer
            assert file_writer is not None  # SummaryWriter opens it in __init__
            file_writer.add_summary(self.summary(value=values), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.close()


def open_event_file(directory: Path, purge_step: int | None) -> EventFileLike:
    return EventFile(directory, purge_step)


class TensorBoardLog:
    """Writes into ``directory`` (inside an existing run directory; it never creates the run
    directory itself).

    The caller's thread only queues plain records (microseconds); a writer thread of its own,
    started at the first write, builds the summaries and writes the event file, so the training
    thread never waits on protobuf, numpy or the disk. ``close()`` waits for everything queued.

    Writing never stops training: the first error the writer raises (a full disk, a broken
    install) is passed once to ``on_failure(step, message)``, on the caller's thread at its next
    call (or at ``close()``), and nothing more is written for the rest of the run."""

    def __init__(
        self,
        directory: str | Path,
        on_failure: Callable[[int, str], None],
        open_writer: Callable[[Path, int | None], EventFileLike] = open_event_file,
    ) -> None:
        self.directory = Path(directory)
        self.on_failure = on_failure
        self.open_writer = open_writer
        self.last_spectra_step: int | None = None
        self.failure_reported = False
        # Owned by the writer thread while it runs:
        self.writer: EventFileLike | None = None
        self.purge_step: int | None = None
        self.failure: tuple[int, str] | None = None
        self.last_step = 0
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if installed("tensorboard"):
            # Importing TensorBoard takes a second or more: pay it now, before training starts,
            # not inside the first timed training window. A broken install is reported by the first write.
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                pass

    # -- the caller's side --------------------------------------------------------------------
    def metrics(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        self._queue(step, lambda writer: writer.add_scalars(step, record_scalars(record)))

    def spectra(self, step: int, layers: tuple[LayerStats, ...]) -> None:
        """σ histograms of every layer, once per step."""
        if step == self.last_spectra_step or not layers:
            return
        self.last_spectra_step = step

        def write(writer: EventFileLike) -> None:
            import numpy as np

            writer.add_histograms(
                step,
                {f"sigma/{layer.name}": np.asarray(layer.sigma, dtype=np.float64) for layer in layers if layer.sigma},
            )

        self._queue(step, write)

    def event(self, event: Event) -> None:
        self._queue(event.step, lambda writer: writer.add_text(f"events/{event.kind}", event.message, event.step))

    def restart_after(self, step: int) -> None:
        """The run goes on from a checkpoint taken at ``step``: what was logged after it is void.
        The next writer starts with ``purge_step = step + 1``."""
        self.last_spectra_step = None
        self._submit(lambda: self._restart(step + 1))

    def close(self) -> None:
        """Write everything queued, then flush and close the event file."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
        self._close_writer()  # the writer thread has ended: this thread owns the writer now
        self._report_failure()

    def _queue(self, step: int, write: Callable[[EventFileLike], Any]) -> None:
        self._report_failure()
        if self.failure is None:
            self._submit(lambda: self._write(step, write))

    def _submit(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="rlr-tensorboard", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _report_failure(self) -> None:
        failure = self.failure
        if failure is not None and not self.failure_reported:
            self.failure_reported = True
            step, message = failure
            self.on_failure(step, f"TensorBoard writing stopped: {message} (metrics.jsonl is still written)")

    # -- the writer thread --------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def _restart(self, purge_step: int) -> None:
        self._close_writer()
        self.purge_step = purge_step

    def _write(self, step: int, write: Callable[[EventFileLike], Any]) -> None:
        if self.failure is not None:
            return
        self.last_step = step
        try:
            if self.writer is None:
                if not self.directory.parent.is_dir():
                    return  # the run directory is not there (a run that failed before it was made)
                self.writer = self.open_writer(self.directory, self.purge_step)
                self.purge_step = None  # only the first writer after a restart purges
            write(self.writer)
        except Exception as error:
            # An optional mirror of metrics.jsonl: whatever its writer raises (OSError from a full
            # disk, a protobuf or import error) is reported once and never reaches the training loop.
            self._fail(step, error)

    def _close_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None and self.failure is None:
            try:
                writer.close()
            except Exception as error:  # see _write
                self._fail(self.last_step, error)

    def _fail(self, step: int, error: Exception) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass  # it has already failed; the one report says so
        message = str(error) if isinstance(error, PresetError) else f"{type(error).__name__}: {error}"
        self.failure = (step, message)
