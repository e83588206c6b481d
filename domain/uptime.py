"""Uptime from a device's own events: online from its add, offline from `WentOffline` to `CameOnline`.

Pure: given the Device stream's events and a window [start, end), the share of the watched time
the device was online and each outage in the window, exact to the microsecond the events carry.
Time before the device was added, and while it was removed, is not watched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from domain.device import Device
from domain.errors import InvalidRange

MAX_PERIOD = timedelta(days=366)
_PERIOD = re.compile(r"(\d{1,4})([hdw]?)")
_UNITS = {"": timedelta(hours=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_period(text: str) -> timedelta:
    """`24h`, `7d`, `30d`, `2w`...: a whole number of hours, days or weeks, at most 366 days; a bare
    number is hours, as in Uptime Kuma's badge URLs (`/uptime/24`). Raises InvalidRange (422) for anything else."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise InvalidRange("period must be a whole number of hours, days or weeks, e.g. 24h, 7d, 30d")
    period = int(match[1]) * _UNITS[match[2]]
    if period > MAX_PERIOD:
        raise InvalidRange("period must be at most 366 days")
    return period


class Outage(msgspec.Struct, frozen=True, kw_only=True):
    """Offline from `start` (the `WentOffline`, or the window's start) to `end` (None: still offline)."""

    start: datetime
    end: datetime | None
    seconds: float
    """Within the window only."""


class Uptime(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    watched_seconds: float
    """The window's time while the device was added (not before its add, not while removed)."""
    online_seconds: float
    percentage: float | None
    """100 × online / watched, to four places; None when nothing of the window was watched."""
    outages: list[Outage]


def uptime(events: Iterable[object], start: datetime, end: datetime) -> Uptime:
    """The uptime in [start, end) of the device whose events (in stream order) are given."""
    watched = online = timedelta(0)
    outages: list[Outage] = []
    state: str | None = None  # None: not added (or removed); "up"; "down"
    since = start
    down_from: datetime | None = None

    def close(until: datetime) -> None:
        nonlocal watched, online
        span = max(timedelta(0), min(until, end) - max(since, start))
        if state is not None:
            watched += span
        if state == "up":
            online += span

    for event in events:
        at: datetime = getattr(event, "timestamp")
        if at >= end:
            break
        match event:
            case Device.Added() | Device.Restored():
                new: str | None = "up"
            case Device.WentOffline():
                new = "down" if state is not None else None
            case Device.CameOnline():
                new = "up" if state is not None else None
            case Device.Removed():
                new = None
            case _:
                continue
        if new == state:
            continue
        close(at)
        if state == "down" and down_from is not None and at > start:
            began = max(down_from, start)
            outages.append(Outage(start=began, end=at, seconds=(at - began).total_seconds()))
        if new == "down":
            down_from = at
        state, since = new, at
    close(end)
    if state == "down" and down_from is not None:
        began = max(down_from, start)
        outages.append(Outage(start=began, end=None, seconds=(end - began).total_seconds()))
    percentage = round(100 * online / watched, 4) if watched else None
    return Uptime(start=start, end=end, watched_seconds=watched.total_seconds(), online_seconds=online.total_seconds(),
                  percentage=percentage, outages=outages)  # fmt: skip
