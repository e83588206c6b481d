"""Queries of the energy read model: history points, totals, power, daily costs, sessions' inputs, rates.

Every query reads the tables `projections.energy` writes. Local periods of any
zone are unions of 5-minute buckets; the hourly rollups answer where every period
and the range fall on UTC hours, the 5-minute buckets elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg

from domain.calendar import BoundaryUnit, boundaries
from domain.pricing import money
from domain.rates import RateVersion
from domain.usage import Run
from projections.devices import TABLE as DEVICES_TABLE
from projections.energy import BUCKETS, DEVICES, HOURS, RATES, READINGS, BucketRow, EnergyDeviceRow, rate_of
from projections.tables import Table

def utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


Aggregation = str
AGGREGATIONS = ("raw", "5min", "hourly", "6hourly", "daily", "weekly", "monthly")


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One history point: the bucket's start (UTC), its energy and cost, and power statistics."""

    timestamp: datetime
    power_w: float | None
    energy_kwh: float | None
    cost: float | None
    min_power_w: float | None
    max_power_w: float | None
    avg_power_w: float | None
    readings: int
    gap: bool


UNIT_OF: dict[str, BoundaryUnit] = {
    "hourly": "hour", "6hourly": "6hour", "daily": "day", "weekly": "week", "monthly": "month",
}


def _hour_aligned(moments: Sequence[datetime]) -> bool:
    return all(m.minute == m.second == m.microsecond == 0 for m in moments)


def _base(starts: Sequence[datetime], start: datetime, end: datetime) -> Table[BucketRow]:
    """Hourly rollups where they answer exactly (every period and the range on UTC hours), else 5-minute buckets.

    Asia/Kolkata's or Asia/Kathmandu's local hours and days fall inside UTC
    hours, so they are always summed from the 5-minute buckets.
    """
    return HOURS if _hour_aligned([*starts, start, end]) else BUCKETS


def _money(value: Decimal | None, places: int = 6) -> float | None:
    return None if value is None else money(value, places)


async def history(
    conn: psycopg.AsyncConnection[Any],
    device_id: UUID,
    start: datetime,
    end: datetime,
    aggregation: Aggregation,
    zone: ZoneInfo,
) -> list[Point]:
    """A device's points in [start, end): its channels summed, by 5 minutes or by local period of `zone`.

    Local periods start where `domain.calendar.boundaries` says; each bucket goes
    to the period it starts in (found by `width_bucket`, a binary search).
    """
    points = await _points(conn, device_id, start, end, aggregation, zone, present_only=False)
    assert points is not None
    return points


async def present_device_history(
    conn: psycopg.AsyncConnection[Any],
    device_id: UUID,
    start: datetime,
    end: datetime,
    aggregation: Aggregation,
    zone: ZoneInfo,
) -> list[Point] | None:
    """`history` of a device the devices read model holds and has not removed, in one statement
    that checks both; None when there is no such device."""
    return await _points(conn, device_id, start, end, aggregation, zone, present_only=True)


# Zero rows: no such device; one row of nulls: the device, without points.
_PRESENT = (
    f"WITH present AS (SELECT 1 FROM {DEVICES_TABLE} WHERE device_id = %(device)s AND NOT removed), "
    "points AS ({query}) SELECT points.* FROM present LEFT JOIN points ON true ORDER BY 1"
)


async def _points(
    conn: psycopg.AsyncConnection[Any],
    device_id: UUID,
    start: datetime,
    end: datetime,
    aggregation: Aggregation,
    zone: ZoneInfo,
    *,
    present_only: bool,
) -> list[Point] | None:
    if aggregation == "raw":
        query = (
            f"SELECT at, sum(power_w), sum(wh), count(*) FROM {READINGS.name} "
            "WHERE device_id = %(device)s AND at >= %(start)s AND at < %(end)s GROUP BY at"
        )
        params: dict[str, Any] = {"device": device_id, "start": start, "end": end}
        rows = await _rows(conn, query, params, present_only)
        return None if rows is None else [
            Point(
                timestamp=utc(at), power_w=power, energy_kwh=None if wh is None else round(wh / 1000, 6), cost=None,
                min_power_w=power, max_power_w=power, avg_power_w=power, readings=1, gap=False,
            )
            for at, power, wh, _ in rows
        ]  # fmt: skip
    if aggregation == "5min":
        starts: list[datetime] = []
        table, key = BUCKETS, "start"
    else:
        starts = boundaries(start, end, zone, UNIT_OF[aggregation])
        table, key = _base(starts, start, end), "width_bucket(start, %(bounds)s::timestamptz[])"
    query = (
        "SELECT key, sum(wh), sum(cost), sum(pmin), sum(pmax), sum(pavg), sum(cnt), bool_or(gap) FROM ("
        f"SELECT channel, {key} AS key, sum(wh) AS wh, sum(cost) AS cost, min(power_min) AS pmin, "
        "max(power_max) AS pmax, sum(power_sum) / nullif(sum(count), 0) AS pavg, sum(count) AS cnt, "
        f"bool_or(gap) AS gap FROM {table.name} "
        "WHERE device_id = %(device)s AND start >= %(start)s AND start < %(end)s GROUP BY channel, key"
        ") AS per_channel GROUP BY key"
    )
    params = {"device": device_id, "start": start, "end": end}
    if starts:
        params["bounds"] = starts
    rows = await _rows(conn, query, params, present_only)
    return None if rows is None else [
        Point(
            timestamp=utc(k) if not starts else starts[k - 1], power_w=avg, energy_kwh=round(wh / 1000, 6),
            cost=_money(cost), min_power_w=pmin, max_power_w=pmax, avg_power_w=avg, readings=int(cnt), gap=bool(gap),
        )
        for k, wh, cost, pmin, pmax, avg, cnt, gap in rows
    ]  # fmt: skip


async def _rows(
    conn: psycopg.AsyncConnection[Any], query: str, params: dict[str, Any], present_only: bool
) -> list[tuple[Any, ...]] | None:
    """The rows of `query` in the order of its first column; with `present_only`, None when the device
    is not present (and its rows otherwise, in the same statement)."""
    statement = _PRESENT.format(query=query) if present_only else f"{query} ORDER BY 1"
    cur = await conn.execute(statement, params)
    rows = await cur.fetchall()
    if not present_only:
        return rows
    if not rows:
        return None
    return [] if rows[0][0] is None else rows


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    wh: float
    cost: Decimal


async def totals(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, spans: Sequence[tuple[datetime, datetime]]
) -> list[Totals]:
    """Energy and cost of a device in each [start, end), from 5-minute buckets (exact in any zone)."""
    low = min(s for s, _ in spans)
    high = max(e for _, e in spans)
    filters = ", ".join(
        f"coalesce(sum(wh) FILTER (WHERE start >= %(s{i})s AND start < %(e{i})s), 0), "
        f"coalesce(sum(cost) FILTER (WHERE start >= %(s{i})s AND start < %(e{i})s), 0)"
        for i in range(len(spans))
    )
    params: dict[str, Any] = {"device": device_id, "low": low, "high": high}
    for i, (s, e) in enumerate(spans):
        params[f"s{i}"], params[f"e{i}"] = s, e
    cur = await conn.execute(
        f"SELECT {filters} FROM {BUCKETS.name} WHERE device_id = %(device)s AND start >= %(low)s AND start < %(high)s",
        params,
    )
    row = await cur.fetchone()
    assert row is not None
    return [Totals(wh=float(row[2 * i]), cost=Decimal(row[2 * i + 1])) for i in range(len(spans))]


class PowerSummary(msgspec.Struct, frozen=True, kw_only=True):
    average_power_w: float
    peak_power_w: float
    on_time_hours: float


async def power_summary(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, start: datetime, end: datetime
) -> PowerSummary:
    """Average and peak power (outlets summed) and on-time in [start, end), from 5-minute buckets."""
    cur = await conn.execute(
        "SELECT coalesce(avg(power), 0), coalesce(max(peak), 0), coalesce(sum(on_s), 0) FROM ("
        "SELECT start, sum(power_sum / nullif(count, 0)) AS power, sum(power_max) AS peak, max(on_s) AS on_s "
        f"FROM {BUCKETS.name} WHERE device_id = %s AND start >= %s AND start < %s GROUP BY start) AS per_bucket",
        (device_id, start, end),
    )
    row = await cur.fetchone()
    assert row is not None
    return PowerSummary(
        average_power_w=round(float(row[0]), 3), peak_power_w=float(row[1]), on_time_hours=round(float(row[2]) / 3600, 3)
    )


class DayCost(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    day: date
    wh: float
    cost: Decimal


async def daily_costs(
    conn: psycopg.AsyncConnection[Any], start: datetime, end: datetime, zone: ZoneInfo
) -> list[DayCost]:
    """Every device's energy and cost per local day of `zone` in [start, end)."""
    starts = boundaries(start, end, zone, "day")
    labels = [s.astimezone(zone).date() for s in starts]
    table = _base(starts, start, end)
    cur = await conn.execute(
        "SELECT device_id, width_bucket(start, %(bounds)s::timestamptz[]) AS day, sum(wh), sum(cost) "
        f"FROM {table.name} WHERE start >= %(start)s AND start < %(end)s GROUP BY device_id, day ORDER BY day",
        {"bounds": starts, "start": start, "end": end},
    )
    return [
        DayCost(device_id=d, day=labels[day - 1], wh=float(wh), cost=Decimal(cost))
        for d, day, wh, cost in await cur.fetchall()
    ]


async def session_threshold(conn: psycopg.AsyncConnection[Any], device_id: UUID) -> float | None:
    """The device's own session threshold, None where it has none."""
    cur = await conn.execute(f"SELECT session_threshold_w FROM {DEVICES.name} WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return None if row is None else row[0]


async def energy_devices(conn: psycopg.AsyncConnection[Any]) -> dict[UUID, EnergyDeviceRow]:
    cur = await conn.execute(DEVICES.select)
    return {row.device_id: row for row in map(DEVICES.decode, await cur.fetchall())}


async def channel_runs(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, start: datetime, end: datetime
) -> dict[str, list[Run]]:
    """Each channel's readings in [start, end) as session detection needs them, in time order."""
    cur = await conn.execute(
        f"SELECT channel, at, power_w, wh FROM {READINGS.name} WHERE device_id = %s AND at >= %s AND at < %s "
        "ORDER BY channel, at",
        (device_id, start, end),
    )
    runs: dict[str, list[Run]] = {}
    for channel, at, power, wh in await cur.fetchall():
        runs.setdefault(channel, []).append(Run(at=at, power_w=power, wh=wh))
    return runs


async def bucket_prices(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, channel: str, start: datetime, end: datetime
) -> dict[datetime, tuple[float, Decimal]]:
    """(Wh, cost) of a channel's buckets in [start, end): the price a session's energy is charged at."""
    cur = await conn.execute(
        f"SELECT start, wh, cost FROM {BUCKETS.name} WHERE device_id = %s AND channel = %s "
        "AND start >= %s AND start < %s",
        (device_id, channel, start, end),
    )
    return {s: (wh, Decimal(cost)) for s, wh, cost in await cur.fetchall()}


async def device_bucket_costs(
    conn: psycopg.AsyncConnection[Any], device_id: UUID, start: datetime, end: datetime
) -> list[tuple[datetime, Decimal]]:
    """(start, cost) of a device's 5-minute buckets in [start, end), its channels (a strip's outlets) summed."""
    cur = await conn.execute(
        f"SELECT start, sum(cost) FROM {BUCKETS.name} WHERE device_id = %s AND start >= %s AND start < %s "
        "GROUP BY start ORDER BY start",
        (device_id, start, end),
    )
    return [(s, Decimal(cost)) for s, cost in await cur.fetchall()]


async def rate_versions(conn: psycopg.AsyncConnection[Any]) -> list[RateVersion]:
    """Every rate version, oldest first."""
    cur = await conn.execute(f"{RATES.select} ORDER BY version")
    return [rate_of(RATES.decode(r)) for r in await cur.fetchall()]
