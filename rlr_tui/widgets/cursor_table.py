"""A row table that keeps its cursor row in view as its size changes."""

from __future__ import annotations

from textual import events
from textual.widgets import DataTable


class CursorTable(DataTable):
    """A DataTable whose cursor row stays visible when the table is laid out or resized: a
    cursor placed before the first layout (a preselected row) is shown when the table opens.
    DataTable's own scrolling counts the horizontal scroll bar's line as visible, so at 80
    columns it stops one row short of the last row; this counts the rows that really show."""

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self.show_cursor_row)

    def show_cursor_row(self) -> None:
        if not self.row_count:
            return
        visible = self.scrollable_content_region.height - (self.header_height if self.show_header else 0)
        row = self.cursor_row
        if visible > 0 and row >= self.scroll_y + visible:
            self.scroll_to(y=row - visible + 1, animate=False, immediate=True)
        elif row < self.scroll_y:
            self.scroll_to(y=row, animate=False, immediate=True)
