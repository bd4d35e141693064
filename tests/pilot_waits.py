"""Waiting on a Textual app under the Pilot by what it shows, never by the clock: the timeouts
are safety nets for a loaded machine, not a pace the test relies on."""

from __future__ import annotations

import html
import re
import time

# Rich's SVG export (what Textual's public App.export_screenshot returns) draws each run of
# equally styled cells as one <text> at x = column × 12.2 (0.61 × its 20 px font), clipped to its
# line; runs of plain spaces may be left out.
CELL_WIDTH = 12.2
RUN = re.compile(
    r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="[\d.]+" '
    r'clip-path="url\(#[\w-]+-line-(\d+)\)">(.*?)</text>'
)


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


def screen_lines(app) -> list[str]:
    """What the terminal shows, line by line (each as wide as the terminal), read from the app's
    screenshot."""
    width, height = app.size
    rows = [[" "] * width for _ in range(height)]
    for x, line, text in RUN.findall(app.export_screenshot()):
        column = round(float(x) / CELL_WIDTH)
        for offset, char in enumerate(html.unescape(text).replace("\xa0", " ")):
            if int(line) < height and column + offset < width:
                rows[int(line)][column + offset] = char
    return ["".join(row) for row in rows]
