"""Waiting on a Textual app under the Pilot by what it shows, never by the clock: the timeouts
are safety nets for a loaded machine, not a pace the test relies on."""

from __future__ import annotations

import time


async def until(pilot, predicate, timeout=60.0):
    """Let the app run until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached in time")


async def settle(pilot):
    """Let the app handle everything already sent to it (messages, refreshes, animations): for
    asserting that something did not happen, or reading what a call just drew."""
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()
