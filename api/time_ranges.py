"""Times, zones and ranges as the energy and rate routes take them in their query parameters:
an IANA zone, an ISO 8601 time (wall-clock in a zone without an offset), a history query's
period or range and aggregation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.errors import InvalidRange
from domain.rollups import BUCKET, EPOCH
from projections.energy_queries import AGGREGATIONS

PERIODS = {
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "3m": timedelta(days=91),
    "6m": timedelta(days=182),
    "1y": timedelta(days=365),
}
AUTO = {"24h": "5min", "7d": "hourly", "30d": "6hourly", "3m": "daily", "6m": "daily", "1y": "weekly"}
MAX_SPAN = timedelta(days=3 * 366)
MAX_RAW_SPAN = timedelta(days=31)


def parse_zone(name: str | None, default: ZoneInfo) -> ZoneInfo:
    """An IANA zone by name (the default when None); raises InvalidRange for an unknown one."""
    if name is None:
        return default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRange(f"timezone {name!r} is not an IANA time zone") from None


def parse_time(text: str | None, field: str, zone: ZoneInfo) -> datetime | None:
    """An ISO 8601 time; one without a UTC offset is wall-clock time in `zone` (the earlier of a
    repeated hour). Raises InvalidRange naming `field` for anything else."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRange(f"{field} must be an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    if moment.year < 2000 or moment.year > 9000:
        raise InvalidRange(f"{field} must be from the year 2000 to 9000")
    return moment.astimezone(timezone.utc)


def _floor(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + ((moment - EPOCH) // step) * step


def _ceil(moment: datetime, step: timedelta) -> datetime:
    return EPOCH - ((EPOCH - moment) // step) * step


def _auto(span: timedelta) -> str:
    for limit, aggregation in (
        (timedelta(days=1), "5min"), (timedelta(days=7), "hourly"), (timedelta(days=31), "6hourly"),
        (timedelta(days=183), "daily"),
    ):  # fmt: skip
        if span <= limit:
            return aggregation
    return "weekly"


INTERVALS = {"5m": "5min", "1h": "hourly", "6h": "6hourly", "1d": "daily", "1w": "weekly", "1mo": "monthly"}
"""The seed's interval names (the deprecated `interval` parameter, and `metadata.aggregation`)."""
INTERVAL_OF = {"raw": "raw", **{aggregation: name for name, aggregation in INTERVALS.items()}}


def chosen_aggregation(aggregation: str, interval: str | None) -> str:
    """The aggregation asked for: `aggregation` by name or seed interval; with `auto`, the deprecated
    `interval` if given. Raises InvalidRange naming the accepted forms."""
    if interval is not None and interval not in INTERVALS:
        raise InvalidRange(f"interval must be one of {', '.join(INTERVALS)}")
    if aggregation == "auto":
        return INTERVALS[interval] if interval is not None else "auto"
    if aggregation in INTERVALS:
        return INTERVALS[aggregation]
    if aggregation not in AGGREGATIONS:
        raise InvalidRange(f"aggregation must be auto or one of {', '.join(AGGREGATIONS)} (or {', '.join(INTERVALS)})")
    return aggregation


def history_range(
    period: str | None, start_time: str | None, end_time: str | None, aggregation: str, now: datetime,
    zone: ZoneInfo,
) -> tuple[datetime, datetime, str]:
    """[start, end) and the aggregation a history query asks for; raises InvalidRange (422) for a bad one.

    A period ends now; its range is widened to whole buckets (whole hours above
    5 minutes). A range given by `start_time` / `end_time` is taken as given, a time
    without an offset read in `zone`.
    """
    if period is not None and period not in PERIODS:
        raise InvalidRange(f"period must be one of {', '.join(PERIODS)}")
    start, end = parse_time(start_time, "start_time", zone), parse_time(end_time, "end_time", zone)
    if start is None and end is None:
        length = PERIODS[period or "24h"]
        chosen = AUTO[period or "24h"] if aggregation == "auto" else aggregation
        step = BUCKET if chosen in ("raw", "5min") else timedelta(hours=1)
        start, end = _floor(now - length, step), _ceil(now, step) if chosen != "raw" else now
    else:
        end = end or now
        start = start or end - PERIODS[period or "24h"]
        if start >= end:
            raise InvalidRange("start_time must be before end_time")
        chosen = _auto(end - start) if aggregation == "auto" else aggregation
    if end - start > (MAX_RAW_SPAN if chosen == "raw" else MAX_SPAN):
        raise InvalidRange(f"the range is too long for aggregation {chosen}")
    return start, end, chosen
