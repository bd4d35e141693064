"""Rank changes as the user sees them. Inside a rank-adaptive window the ranks are augmented
(r → up to 2r), which no dashboard shows; a change is reported against the rank last shown, not
the augmented rank a truncation started from, so a window that grows r to 2r and cuts back to r
changed nothing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from rlr_engine.method.condlr import RankChange


class RankReports:
    """The rank of each layer as last reported."""

    def __init__(self, ranks: dict[str, int]) -> None:
        self.reported = dict(ranks)

    def rebase(self, changes: Iterable[RankChange]) -> list[RankChange]:
        """``changes`` with each old rank the one last reported; their new ranks become the
        reported ones."""
        rebased = []
        for change in changes:
            rebased.append(replace(change, old_rank=self.reported.get(change.layer, change.old_rank)))
            self.reported[change.layer] = change.new_rank
        return rebased
