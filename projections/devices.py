"""The devices read model: one row per present device with its latest reading, and its queries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from domain.device import Device
from domain.energy import counter_delta_wh, share_within
from domain.meter import MeterDay
from projections.engine import READ_SCHEMA

TABLE = f"{READ_SCHEMA}.devices"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    device_id uuid PRIMARY KEY,
    address text NOT NULL UNIQUE,
    alias text NOT NULL,
    model text NOT NULL,
    device_type text NOT NULL,
    mac text NOT NULL,
    removed boolean NOT NULL DEFAULT false,
    online boolean NOT NULL DEFAULT true,
    is_on boolean,
    relays jsonb NOT NULL DEFAULT '{{}}',
    power_w double precision,
    voltage_v double precision,
    current_a double precision,
    total_wh double precision,
    rssi integer,
    outlets jsonb NOT NULL DEFAULT '[]',
    today date,
    today_wh double precision NOT NULL DEFAULT 0,
    month date,
    month_wh double precision NOT NULL DEFAULT 0,
    last_seen timestamptz,
    added_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
"""


class OutletView(msgspec.Struct, frozen=True, kw_only=True):
    outlet_id: str
    index: int
    alias: str
    is_on: bool
    current_power_w: float | None = None
    voltage: float | None = None
    current: float | None = None


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    """A device as the API shows it (fields named as in the Kasa Monitor API)."""

    device_id: UUID
    device_ip: str
    alias: str
    model: str
    device_type: str
    mac: str
    online: bool
    is_on: bool | None
    current_power_w: float | None
    today_energy_kwh: float
    month_energy_kwh: float
    voltage: float | None
    current: float | None
    signal_strength: int | None
    last_seen: datetime | None
    added_at: datetime
    outlets: list[OutletView]


def _month_start(day: datetime) -> datetime:
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


class DevicesProjector:
    """Projects Device events and each device's newest reading into `wl_read.devices`."""

    name = "devices"

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(DDL)

    def clear(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(f"DELETE FROM {TABLE}")

    def apply(self, cur: psycopg.Cursor[Any], event: object, notification_id: int) -> None:
        match event:
            case Device.Added():
                self._upsert(cur, event)
            case Device.Restored():
                self._restore(cur, event)
            case Device.Renamed(originator_id=device_id, alias=alias, timestamp=at):
                cur.execute(
                    f"UPDATE {TABLE} SET alias = %s, updated_at = %s WHERE device_id = %s", (alias, at, device_id)
                )
            case Device.Removed(originator_id=device_id, timestamp=at):
                cur.execute(
                    f"UPDATE {TABLE} SET removed = true, updated_at = %s WHERE device_id = %s", (at, device_id)
                )
            case Device.StateChanged(originator_id=device_id, is_on=is_on, outlet_index=index, timestamp=at):
                key = "plug" if index is None else str(index)
                cur.execute(
                    f"UPDATE {TABLE} SET relays = relays || %s, updated_at = %s WHERE device_id = %s",
                    (Jsonb({key: is_on}), at, device_id),
                )
            case Device.WentOffline(originator_id=device_id, timestamp=at):
                cur.execute(
                    f"UPDATE {TABLE} SET online = false, updated_at = %s WHERE device_id = %s", (at, device_id)
                )
            case Device.CameOnline(originator_id=device_id, timestamp=at):
                cur.execute(
                    f"UPDATE {TABLE} SET online = true, updated_at = %s WHERE device_id = %s", (at, device_id)
                )
            case MeterDay.ReadingRecorded():
                self._reading(cur, event)
            case _:
                pass

    def _upsert(self, cur: psycopg.Cursor[Any], event: Device.Added) -> None:
        cur.execute(
            f"""
            INSERT INTO {TABLE} (device_id, address, alias, model, device_type, mac, added_at, updated_at)
            VALUES (%(id)s, %(address)s, %(alias)s, %(model)s, %(type)s, %(mac)s, %(at)s, %(at)s)
            """,
            {
                "id": event.originator_id,
                "address": event.address,
                "alias": event.alias,
                "model": event.model,
                "type": event.device_type,
                "mac": event.mac,
                "at": event.timestamp,
            },
        )

    def _restore(self, cur: psycopg.Cursor[Any], event: Device.Restored) -> None:
        cur.execute(
            f"""
            UPDATE {TABLE} SET removed = false, online = true, alias = %(alias)s, model = %(model)s,
                device_type = %(type)s, mac = %(mac)s, added_at = %(at)s, updated_at = %(at)s
            WHERE device_id = %(id)s
            """,
            {
                "id": event.originator_id,
                "alias": event.alias,
                "model": event.model,
                "type": event.device_type,
                "mac": event.mac,
                "at": event.timestamp,
            },
        )

    def _reading(self, cur: psycopg.Cursor[Any], event: MeterDay.ReadingRecorded) -> None:
        row = cur.execute(
            f"SELECT total_wh, outlets, today, today_wh, month, month_wh, last_seen FROM {TABLE} "
            "WHERE device_id = %s AND NOT removed FOR UPDATE",
            (event.device_id,),
        ).fetchone()
        if row is None:
            return
        total_wh, outlets, today, today_wh, month, month_wh, last_seen = row
        at = event.measured_at
        if last_seen is not None and at <= last_seen:
            return
        if event.outlets:
            before = {o["outlet_id"]: o.get("total_wh") for o in outlets}
            used = sum(counter_delta_wh(before.get(o.outlet_id), o.total_wh) for o in event.outlets)
        else:
            used = counter_delta_wh(total_wh, event.total_wh)
        start = last_seen or at
        day_start = at.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        month_start = _month_start(day_start)
        in_day = share_within(start, at, used, day_start, day_start + timedelta(days=1))
        in_month = share_within(start, at, used, month_start, _next_month(month_start))
        today_wh = (today_wh if today == day_start.date() else 0.0) + in_day
        month_wh = (month_wh if month == month_start.date() else 0.0) + in_month
        cur.execute(
            f"""
            UPDATE {TABLE} SET is_on = %s, power_w = %s, voltage_v = %s, current_a = %s, total_wh = %s,
                rssi = %s, outlets = %s, relays = %s, today = %s, today_wh = %s, month = %s, month_wh = %s,
                last_seen = %s, updated_at = %s
            WHERE device_id = %s
            """,
            (
                event.is_on,
                event.power_w,
                event.voltage_v,
                event.current_a,
                event.total_wh,
                event.rssi,
                Jsonb([msgspec.structs.asdict(o) for o in event.outlets]),
                Jsonb({str(o.index): o.is_on for o in event.outlets} if event.outlets else {"plug": event.is_on}),
                day_start.date(),
                today_wh,
                month_start.date(),
                month_wh,
                at,
                event.timestamp,
                event.device_id,
            ),
        )


_COLUMNS = (
    "device_id, address, alias, model, device_type, mac, online, is_on, relays, power_w, voltage_v, "
    "current_a, rssi, outlets, today, today_wh, month, month_wh, last_seen, added_at"
)


def _view(row: dict[str, Any], now: datetime) -> DeviceView:
    day = now.astimezone(timezone.utc).date()
    relays = row["relays"] or {}
    outlets = [
        OutletView(
            outlet_id=o["outlet_id"],
            index=o["index"],
            alias=o["alias"],
            is_on=relays.get(str(o["index"]), o["is_on"]),
            current_power_w=o.get("power_w"),
            voltage=o.get("voltage_v"),
            current=o.get("current_a"),
        )
        for o in row["outlets"]
    ]
    is_on = relays.get("plug", row["is_on"]) if not outlets else any(o.is_on for o in outlets)
    return DeviceView(
        device_id=row["device_id"],
        device_ip=row["address"],
        alias=row["alias"],
        model=row["model"],
        device_type=row["device_type"],
        mac=row["mac"],
        online=row["online"],
        is_on=is_on,
        current_power_w=row["power_w"],
        today_energy_kwh=round(row["today_wh"] / 1000, 6) if row["today"] == day else 0.0,
        month_energy_kwh=round(row["month_wh"] / 1000, 6)
        if row["month"] == day.replace(day=1)
        else 0.0,
        voltage=row["voltage_v"],
        current=row["current_a"],
        signal_strength=row["rssi"],
        last_seen=row["last_seen"],
        added_at=row["added_at"],
        outlets=outlets,
    )


async def list_devices(conn: psycopg.AsyncConnection[Any]) -> list[DeviceView]:
    """Every present device, in the order they were added."""
    now = datetime.now(timezone.utc)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE NOT removed ORDER BY added_at, address")
        return [_view(row, now) for row in await cur.fetchall()]


async def find_device(conn: psycopg.AsyncConnection[Any], key: str) -> DeviceView | None:
    """A present device by its id or by its address (canonical spelling)."""
    try:
        device_id: UUID | None = UUID(key)
    except ValueError:
        device_id = None
    async with conn.cursor(row_factory=dict_row) as cur:
        if device_id is not None:
            await cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE device_id = %s AND NOT removed", (device_id,))
        else:
            await cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE address = %s AND NOT removed", (key,))
        row = await cur.fetchone()
    return _view(row, datetime.now(timezone.utc)) if row else None


async def count_devices(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """(present devices, of which online)."""
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT count(*), count(*) FILTER (WHERE online) FROM {TABLE} WHERE NOT removed")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def active_devices(conn: psycopg.AsyncConnection[Any]) -> list[tuple[UUID, str]]:
    """(id, address) of every present device: what the poller polls."""
    cur = await conn.execute(f"SELECT device_id, address FROM {TABLE} WHERE NOT removed ORDER BY address")
    return [(r[0], r[1]) for r in await cur.fetchall()]
