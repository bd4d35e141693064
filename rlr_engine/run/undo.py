"""Steering you can take back: the run's state from just before each of its last live changes.

Each entry holds what one change (τ, learning rate, a truncation and its θ, β or the window)
altered, as ``Trainer.steering_state()`` copies it: weights at their ranks, optimizer state and
hyperparameters, θ, the rank adaptation's state. Undoing the newest entry brings that state back;
the step counter, the data order and the curves go on (an undo is a change of its own, made at
the current step, not a rewind).

Entries live in host memory up to ``MEMORY_LIMIT_BYTES`` in all; past it the oldest are written,
atomically, to files under the run directory's ``undo/`` and read back when undone. Only the
newest ``DEPTH`` are kept. Files are removed with their entry, when the run ends, and when an
engine starts in the run directory (a killed engine's leftovers): an undo never outlives the
engine that recorded it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlr_engine.core.atomic_files import atomic_file

DEPTH = 5  # changes that can be undone, newest first
MEMORY_LIMIT_BYTES = 256 << 20  # host memory for them; older ones go to disk past it


@dataclass
class Undoable:
    """One remembered change: ``label`` says what it did (e.g. "τ 0.1 → 0.5"), ``step`` when;
    ``state`` is in memory, or None once written to ``path``."""

    label: str
    step: int
    nbytes: int
    state: dict[str, Any] | None
    path: Path | None = None


def state_bytes(value: Any) -> int:
    """Bytes of the tensors held in ``value`` (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(item) for item in value)
    return 0


class UndoHistory:
    """The newest ``depth`` changes of a run, newest last (see the module docstring).

    Args:
        directory: where states past the memory limit go (created when first needed); None
            keeps every state in memory.
        depth: how many changes are kept.
        memory_limit: bytes of states kept in memory (None: ``MEMORY_LIMIT_BYTES``).
    """

    def __init__(self, directory: Path | None, depth: int = DEPTH, memory_limit: int | None = None) -> None:
        self.directory = directory
        self.depth = depth
        self.memory_limit = MEMORY_LIMIT_BYTES if memory_limit is None else memory_limit
        self.entries: list[Undoable] = []
        self.dropped = 0  # changes forgotten because more than ``depth`` came after them
        self._files = 0

    def __len__(self) -> int:
        return len(self.entries)

    def remember(self, label: str, step: int, state: dict[str, Any]) -> None:
        """Keep ``state`` (from just before the change ``label`` made at ``step``)."""
        self.entries.append(Undoable(label, step, state_bytes(state), state))
        while len(self.entries) > self.depth:
            self._forget(self.entries.pop(0))
            self.dropped += 1
        self._spill()

    def take(self) -> Undoable:
        """The newest change, removed from the history, its state in memory. ValueError when
        there is none, or its state cannot be read back (the change is forgotten then)."""
        if not self.entries:
            raise ValueError("no change to undo")
        entry = self.entries.pop()
        if entry.state is None:
            assert entry.path is not None
            try:
                entry.state = torch.load(entry.path, map_location="cpu", weights_only=True)
            except Exception as error:  # deleted, truncated, unreadable: nothing was undone
                raise ValueError(
                    f"the state from before {entry.label} could not be read back from {entry.path} "
                    f"({type(error).__name__}); nothing was undone"
                ) from None
            finally:
                entry.path.unlink(missing_ok=True)
        return entry

    def clear(self) -> None:
        """Forget every change and remove the files of ``directory``: when an engine begins (a
        killed engine's states cannot be undone by the next) and when the run ends."""
        for entry in self.entries:
            self._forget(entry)
        self.entries.clear()
        self._remove_files()

    def _spill(self) -> None:
        """Write the oldest in-memory states to disk until those left fit the memory limit."""
        if self.directory is None:
            return
        for entry in self.entries:
            if sum(e.nbytes for e in self.entries if e.state is not None) <= self.memory_limit:
                return
            if entry.state is None:
                continue
            self._files += 1
            path = self.directory / f"state-{self._files}.pt"
            try:
                self.directory.mkdir(mode=0o700, exist_ok=True)
                with atomic_file(path) as handle:
                    torch.save(entry.state, handle)
            except OSError:  # a full disk: this change can no longer be undone; training goes on
                self.entries.remove(entry)
                self.dropped += 1
                self._spill()
                return
            entry.state, entry.path = None, path

    def _forget(self, entry: Undoable) -> None:
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)

    def _remove_files(self) -> None:
        if self.directory is not None and self.directory.is_dir():
            shutil.rmtree(self.directory, ignore_errors=True)
