"""Local calendar periods as UTC instants: a local day has 23, 24 or 25 hours.

A period is start-inclusive and end-exclusive, and each period ends where the next
one starts, so periods of one unit tile the time line without gaps or overlaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec

Unit = Literal["day", "month"]


class Period(msgspec.Struct, frozen=True, kw_only=True):
    """One local day or month: `label` is its first local date, [start, end) its UTC instants."""

    unit: Unit
    label: date
    start: datetime
    end: datetime


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def _first_of(moment: datetime, zone: ZoneInfo, unit: Unit) -> date:
    day = moment.astimezone(zone).date()
    return day if unit == "day" else day.replace(day=1)


def _following(label: date, unit: Unit) -> date:
    if unit == "day":
        return label + timedelta(days=1)
    return (label + timedelta(days=32)).replace(day=1)


def _preceding(label: date, unit: Unit) -> date:
    if unit == "day":
        return label - timedelta(days=1)
    return (label - timedelta(days=1)).replace(day=1)


def _period(label: date, zone: ZoneInfo, unit: Unit) -> Period:
    return Period(
        unit=unit,
        label=label,
        start=_local_midnight(label, zone),
        end=_local_midnight(_following(label, unit), zone),
    )


def local_period(moment: datetime, zone: ZoneInfo, unit: Unit) -> Period:
    """The local day or month that contains `moment`."""
    period = _period(_first_of(moment, zone, unit), zone, unit)
    # The boundaries are what must hold, also where a zone's transition falls at midnight.
    while moment >= period.end:
        period = _period(_following(period.label, unit), zone, unit)
    while moment < period.start:
        period = _period(_preceding(period.label, unit), zone, unit)
    return period


def local_periods(start: datetime, end: datetime, zone: ZoneInfo, unit: Unit) -> Iterator[Period]:
    """The local periods that [start, end) touches, in order; an instant (start == end) touches one."""
    period = local_period(start, zone, unit)
    yield period
    while period.end < end:
        period = _period(_following(period.label, unit), zone, unit)
        yield period


class LocalCalendar:
    """The local periods of one zone, remembering the latest of each unit.

    Readings come in time order, so nearly every lookup falls in the period of
    the one before and costs two comparisons.
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._latest: dict[Unit, Period] = {}
        self._days: tuple[Period, Period] | None = None

    def day_and_month(self, moment: datetime) -> tuple[Period, Period]:
        """The local day and the local month that contain `moment`.

        A local day lies inside its month (both start at a local midnight), so
        while moments stay in one day both are the ones of the moment before.
        """
        days = self._days
        if days is not None and days[0].start <= moment < days[0].end:
            return days
        days = self._days = (self.period(moment, "day"), self.period(moment, "month"))
        return days

    def period(self, moment: datetime, unit: Unit) -> Period:
        """The local day or month that contains `moment`."""
        latest = self._latest.get(unit)
        if latest is not None and latest.start <= moment < latest.end:
            return latest
        period = self._latest[unit] = local_period(moment, self.zone, unit)
        return period


def local_day(moment: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """The local date of `moment` and its [start, end) as UTC instants."""
    period = local_period(moment, zone, "day")
    return period.label, period.start, period.end


def local_month(moment: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """The first day of the local month of `moment` and the month's [start, end) as UTC instants."""
    period = local_period(moment, zone, "month")
    return period.label, period.start, period.end


BoundaryUnit = Literal["hour", "6hour", "day", "week", "month"]


QUARTER = timedelta(minutes=15)


def _local_hours(start: datetime, end: datetime, zone: ZoneInfo, every: int) -> list[datetime]:
    """UTC instants in [start, end), and the last one before, at which a local hour divisible by `every` begins.

    Every UTC offset in use is a multiple of 15 minutes, so local hours begin on
    UTC quarter hours; a repeated (fall-back) hour begins twice.
    """
    moment = start.astimezone(timezone.utc)
    moment = moment - timedelta(minutes=moment.minute % 15, seconds=moment.second, microseconds=moment.microsecond)
    found: list[datetime] = []
    back = moment
    while not found:
        back -= QUARTER
        local = back.astimezone(zone)
        if local.minute == 0 and local.hour % every == 0:
            found.append(back)
    while moment < end:
        local = moment.astimezone(zone)
        if local.minute == 0 and local.hour % every == 0:
            if moment <= start:
                found = [moment]
            else:
                found.append(moment)
        moment += QUARTER
    return found


def boundaries(start: datetime, end: datetime, zone: ZoneInfo, unit: BoundaryUnit) -> list[datetime]:
    """The UTC starts of the local periods of `zone` that [start, end) touches, in order.

    Hours follow the wall clock (a spring-forward day has 23, a fall-back day 25);
    weeks start on Monday; every list starts at or before `start`.
    """
    if unit in ("hour", "6hour"):
        return _local_hours(start, end, zone, 1 if unit == "hour" else 6)
    if unit == "week":
        day = local_period(start, zone, "day")
        monday = local_period(day.start - timedelta(days=day.label.weekday()) + timedelta(hours=12), zone, "day")
        starts = [monday.start]
        label = monday.label
        while starts[-1] < end:
            label += timedelta(days=7)
            starts.append(_local_midnight(label, zone))
        return starts[:-1]
    return [p.start for p in local_periods(start, end, zone, "day" if unit == "day" else "month")]
