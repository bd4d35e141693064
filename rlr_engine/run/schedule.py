"""What the end of an epoch does, as a pure function of the run's config and the epoch: the
scheduled truncation, evaluation, attack and checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from rlr_engine.core.config import RunConfig


@dataclass(frozen=True)
class EpochEnd:
    """The work due at the end of an epoch, in the order the engine does it."""

    truncate: bool
    evaluate: bool
    attack: bool
    checkpoint: bool


def epoch_end(config: RunConfig, epoch: int, last: bool) -> EpochEnd:
    """What is due after ``epoch`` (counted from 1); ``last``: the run ends with it. The last
    epoch is always evaluated; its attack is the final one (the engine's end of run), not this."""

    def every(interval: int) -> bool:
        return bool(interval) and epoch % interval == 0

    return EpochEnd(
        truncate=every(config.truncate_every) and config.is_low_rank,
        evaluate=every(config.eval_every) or last,
        attack=every(config.attack_every) and not last,
        checkpoint=every(config.checkpoint_every),
    )
