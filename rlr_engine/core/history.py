"""Bounded histories for long runs."""

from __future__ import annotations


class DecimatingSeries:
    """Keeps at most ``capacity`` (x, y) points of an arbitrarily long series.

    When full, every other point is dropped and only every 2ᵏ-th later point is kept, so the
    series always spans the whole run at a uniform stride: memory and redraw cost stay bounded.
    """

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 4:
            raise ValueError(f"capacity must be >= 4, got {capacity}")
        self.capacity = capacity
        self.stride = 1
        self._seen = 0
        self._points: list[tuple[int, float]] = []

    def append(self, x: int, y: float) -> None:
        if self._seen % self.stride == 0:
            self._points.append((x, y))
            if len(self._points) >= self.capacity:
                self._points = self._points[::2]
                self.stride *= 2
        self._seen += 1

    def points(self) -> tuple[tuple[int, float], ...]:
        return tuple(self._points)

    def __len__(self) -> int:
        return len(self._points)

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "stride": self.stride,
            "seen": self._seen,
            "points": [list(p) for p in self._points],
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.stride, self._seen = state["capacity"], state["stride"], state["seen"]
        self._points = [(int(x), float(y)) for x, y in state["points"]]
