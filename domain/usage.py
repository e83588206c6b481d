"""Usage sessions: runs of a channel drawing above a threshold, and the energy settings that shape them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from domain.energy import EnergyRules


class EnergySettings(msgspec.Struct, frozen=True, kw_only=True):
    """The energy fold's rules and the defaults of session detection."""

    rules: EnergyRules = EnergyRules()
    session_threshold_w: float = 5.0
    session_min_duration: timedelta = timedelta(minutes=1)


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """A reading as session detection sees it: power, and the energy of the interval ending at it."""

    at: datetime
    power_w: float | None
    wh: float | None


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """[start, end) of one run above the threshold; `wh` is the energy of the intervals inside it."""

    start: datetime
    end: datetime
    wh: float
    peak_w: float
    intervals: tuple[tuple[datetime, datetime, float], ...]


def sessions(
    readings: Sequence[Run], *, threshold_w: float, min_duration: timedelta, max_gap: timedelta
) -> list[Session]:
    """The sessions in readings sorted by time.

    A session starts at the first reading at or above `threshold_w` and ends at
    the first reading below it, or at the last reading above it where a gap longer
    than `max_gap` follows (nothing is known across a gap). Runs shorter than
    `min_duration` are left out.
    """
    found: list[Session] = []
    start: Run | None = None
    last: Run | None = None
    peak = 0.0
    wh = 0.0
    intervals: list[tuple[datetime, datetime, float]] = []

    def close(end: datetime) -> None:
        if start is not None and end - start.at >= min_duration:
            found.append(Session(start=start.at, end=end, wh=wh, peak_w=peak, intervals=tuple(intervals)))

    for reading in readings:
        above = reading.power_w is not None and reading.power_w >= threshold_w
        if start is not None and last is not None and reading.at - last.at > max_gap:
            close(last.at)
            start = None
        if start is not None and last is not None:
            energy = reading.wh or 0.0
            wh += energy
            intervals.append((last.at, reading.at, energy))
            if not above:
                close(reading.at)
                start = None
            else:
                peak = max(peak, reading.power_w or 0.0)
        elif above:
            start, peak, wh, intervals = reading, reading.power_w or 0.0, 0.0, []
        last = reading
    if start is not None and last is not None:
        close(last.at)
    return found
