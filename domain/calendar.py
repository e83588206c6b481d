"""Local calendar periods as UTC instants: a local day has 23, 24 or 25 hours."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def local_day(moment: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """The local date of `moment` and its [start, end) as UTC instants."""
    day = moment.astimezone(zone).date()
    return day, _local_midnight(day, zone), _local_midnight(day + timedelta(days=1), zone)


def local_month(moment: datetime, zone: ZoneInfo) -> tuple[date, datetime, datetime]:
    """The first day of the local month of `moment` and the month's [start, end) as UTC instants."""
    first = moment.astimezone(zone).date().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, _local_midnight(first, zone), _local_midnight(following, zone)
