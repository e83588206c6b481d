"""The cost report: every device's and every day's energy and cost over local dates, money rounded once.

Read from the energy read model (`projections.energy_queries`); the fixed daily
charge of the rate in force at each local midnight goes to that day, and days and
devices are rounded by largest remainder so each list sums to the rounded total.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, localcontext
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg

from domain.pricing import PRICING, round_money, round_parts
from domain.rates import RateVersion, in_force
from projections.energy import EnergyDeviceRow
from projections.energy_queries import DayCost, daily_costs, energy_devices, rate_versions

MONEY_PLACES = 4


class DeviceShare(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    address: str
    alias: str
    wh: float
    cost: Decimal
    percentage: float


class DayTotal(msgspec.Struct, frozen=True, kw_only=True):
    day: date
    wh: float
    cost: Decimal


class CostReport(msgspec.Struct, frozen=True, kw_only=True):
    """Costs of local days [first, last] of a zone; money rounded once, so the days sum to the total exactly."""

    currency: str
    total_cost: Decimal
    total_wh: float
    average_daily_cost: Decimal
    fixed_charges: Decimal
    devices: list[DeviceShare]
    days: list[DayTotal]


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


async def cost_report(conn: psycopg.AsyncConnection[Any], first: date, last: date, zone: ZoneInfo) -> CostReport:
    """Every device's and every day's energy and cost from `first` to `last` (local dates of `zone`, inclusive).

    The fixed daily charge of the rate in force at each local midnight is added
    to that day (not to any device). Days and devices are rounded to
    MONEY_PLACES by largest remainder, so each list sums to the rounded total.
    """
    start, end = _midnight(first, zone), _midnight(last + timedelta(days=1), zone)
    rows = await daily_costs(conn, start, end, zone)
    versions = await rate_versions(conn)
    devices = await energy_devices(conn)
    with localcontext(PRICING):
        return _report(rows, versions, devices, first, last, zone, end)


def _report(
    rows: Sequence[DayCost], versions: list[RateVersion], devices: dict[UUID, EnergyDeviceRow], first: date,
    last: date, zone: ZoneInfo, end: datetime,
) -> CostReport:
    """The report's sums, in PRICING: an amount beyond what can be stored becomes Infinity, never an error."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    day_cost = {d: Decimal(0) for d in days}
    day_wh = {d: 0.0 for d in days}
    device_cost: dict[UUID, Decimal] = {}
    device_wh: dict[UUID, float] = {}
    for row in rows:
        if row.day in day_cost:
            day_cost[row.day] += row.cost
            day_wh[row.day] += row.wh
        device_cost[row.device_id] = device_cost.get(row.device_id, Decimal(0)) + row.cost
        device_wh[row.device_id] = device_wh.get(row.device_id, 0.0) + row.wh
    fixed = Decimal(0)
    for day in days:
        rate = in_force(versions, _midnight(day, zone))
        if rate is not None and rate.daily_charge:
            day_cost[day] += rate.daily_charge
            fixed += rate.daily_charge
    rounded_days = round_parts([day_cost[d] for d in days], MONEY_PLACES)
    total = sum(rounded_days, Decimal(0))
    order = sorted(device_cost, key=lambda d: (-device_wh[d], str(d)))
    rounded_devices = round_parts([device_cost[d] for d in order], MONEY_PLACES)
    total_wh = sum(device_wh.values())
    current = in_force(versions, end - timedelta(microseconds=1))
    return CostReport(
        currency=current.currency if current else "USD",
        total_cost=total,
        total_wh=total_wh,
        average_daily_cost=round_money(total / len(days), MONEY_PLACES),
        fixed_charges=round_money(fixed, MONEY_PLACES),
        devices=[
            DeviceShare(
                device_id=d, address=devices[d].address if d in devices else "",
                alias=devices[d].alias if d in devices else "", wh=device_wh[d], cost=cost,
                percentage=round(100 * device_wh[d] / total_wh, 1) if total_wh else 0.0,
            )
            for d, cost in zip(order, rounded_devices, strict=True)
        ],
        days=[DayTotal(day=d, wh=day_wh[d], cost=c) for d, c in zip(days, rounded_days, strict=True)],
    )  # fmt: skip
