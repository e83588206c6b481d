"""What `/metrics` says about each device, read from the devices and energy read models.

Every API process reads the same rows, so every process gives the same per-device answer.
A device is one channel (outlet ``""``); a strip adds one channel per outlet, named by its
outlet id.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg.rows import tuple_row

from domain.calendar import local_period
from projections.devices import DEVICES, DeviceRow
from projections.energy_queries import daily_costs


class ChannelSample(msgspec.Struct, frozen=True, kw_only=True):
    """A device's own meter and relay (`outlet` empty) or one outlet of a strip."""

    outlet: str
    power_w: float | None
    voltage_v: float | None
    current_a: float | None
    total_wh: float | None
    is_on: bool | None


class DeviceSample(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    alias: str
    model: str
    online: bool
    today_kwh: float
    """As `today_energy_kwh` of `GET /api/devices`."""
    cost_today: Decimal
    """As `daily_cost` of `GET /api/device/{device}/stats`, before rounding."""
    channels: list[ChannelSample]


def _channels(row: DeviceRow) -> list[ChannelSample]:
    is_on = row.relays.get("plug", row.is_on) if not row.outlets else any(
        row.relays.get(str(o.index), o.is_on) for o in row.outlets
    )
    channels = [ChannelSample(outlet="", power_w=row.power_w, voltage_v=row.voltage_v, current_a=row.current_a,
                              total_wh=row.total_wh, is_on=is_on)]  # fmt: skip
    channels += [
        ChannelSample(outlet=o.outlet_id, power_w=o.power_w, voltage_v=o.voltage_v, current_a=o.current_a,
                      total_wh=o.total_wh, is_on=row.relays.get(str(o.index), o.is_on))
        for o in row.outlets
    ]  # fmt: skip
    return channels


async def device_samples(conn: psycopg.AsyncConnection[Any], now: datetime, zone: ZoneInfo) -> list[DeviceSample]:
    """Every present device as `/metrics` shows it; today is the local day of `zone` at `now`."""
    day = local_period(now, zone, "day")
    costs = {c.device_id: c.cost for c in await daily_costs(conn, day.start, day.end, zone)}
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{DEVICES.select} WHERE NOT removed ORDER BY added_at, address")
        rows = [DEVICES.decode(record) for record in await cur.fetchall()]
    return [
        DeviceSample(
            device_id=row.device_id, alias=row.alias, model=row.model, online=row.online,
            today_kwh=round(row.today_wh / 1000, 6) if row.today == day.label else 0.0,
            cost_today=costs.get(row.device_id, Decimal(0)), channels=_channels(row),
        )  # fmt: skip
        for row in rows
    ]
