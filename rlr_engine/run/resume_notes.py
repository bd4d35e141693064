"""What a resumed run tells its user: the warnings of restoring its checkpoint, the changes
applied after that checkpoint that it does not hold (an engine that died after them), and the
hyperparameters the resume set anew."""

from __future__ import annotations

from collections.abc import Sequence

from rlr_engine.control.records import Event


def events_since_checkpoint(events: Sequence[Event], step: int) -> list[Event]:
    """The events recorded after the checkpoint at ``step`` was written (by the seq of its
    event: a command at the same step after it counts, one of an abandoned later history that an
    earlier resume replaced does not)."""
    written = [i for i, e in enumerate(events) if e.kind == "checkpoint" and e.step == step]
    return list(events[written[-1] + 1 :]) if written else []


def resume_notes(
    events: Sequence[Event], step: int, warnings: Sequence[str], changes: Sequence[str]
) -> list[tuple[str, str]]:
    """(kind, message) events for a run resumed from its checkpoint at ``step``: the restore's
    ``warnings``, the changes applied after the checkpoint (lost with the engine that died),
    and the settings ``changes`` the resume made ("key: old → new")."""
    notes = [("warning", warning) for warning in warnings]
    lost = [e.message for e in events_since_checkpoint(events, step) if e.kind == "applied"]
    if lost:
        listed = "; ".join(lost[:5]) + (f"; and {len(lost) - 5} more" if len(lost) > 5 else "")
        notes.append(
            (
                "warning",
                f"resumed from the checkpoint at step {step}: {len(lost)} change(s) applied "
                f"after it are not in it ({listed}); set them again if they still apply",
            )
        )
    if changes:
        notes.append(("info", f"set on resume: {', '.join(changes)}"))
    return notes
