"""Energy from cumulative counters: resets count from the new value, never negative."""

from __future__ import annotations

from datetime import datetime


def counter_delta_wh(previous_wh: float | None, current_wh: float | None) -> float:
    """Energy between two readings of a cumulative counter.

    A counter that went down was reset (the device rebooted): the energy since
    the reset is the new value itself. A missing counter on either side gives 0:
    energy is never invented.
    """
    if previous_wh is None or current_wh is None:
        return 0.0
    if current_wh < previous_wh:
        return max(current_wh, 0.0)
    return current_wh - previous_wh


def share_within(start: datetime, end: datetime, wh: float, window_start: datetime, window_end: datetime) -> float:
    """The part of `wh`, used evenly over [start, end), that falls in [window_start, window_end)."""
    if end <= start:
        return wh if window_start <= end < window_end else 0.0
    overlap = (min(end, window_end) - max(start, window_start)).total_seconds()
    if overlap <= 0:
        return 0.0
    return wh * overlap / (end - start).total_seconds()
