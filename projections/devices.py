"""The devices read model: one row per present device with its latest reading, and its queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from domain.calendar import local_day, local_month
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


ROW_FIELDS = (
    "device_id", "address", "alias", "model", "device_type", "mac", "removed", "online", "is_on", "relays",
    "power_w", "voltage_v", "current_a", "total_wh", "rssi", "outlets", "today", "today_wh", "month",
    "month_wh", "last_seen", "added_at", "updated_at",
)


class DeviceRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.devices`, folded in memory from events (pure: no I/O)."""

    device_id: UUID
    address: str
    alias: str
    model: str
    device_type: str
    mac: str
    added_at: datetime
    updated_at: datetime
    removed: bool = False
    online: bool = True
    is_on: bool | None = None
    relays: dict[str, bool] = msgspec.field(default_factory=dict)
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    total_wh: float | None = None
    rssi: int | None = None
    outlets: list[dict[str, Any]] = msgspec.field(default_factory=list)
    today: date | None = None
    today_wh: float = 0.0
    month: date | None = None
    month_wh: float = 0.0
    last_seen: datetime | None = None

    @classmethod
    def added(cls, event: Device.Added) -> DeviceRow:
        return cls(
            device_id=event.originator_id, address=event.address, alias=event.alias, model=event.model,
            device_type=event.device_type, mac=event.mac, added_at=event.timestamp, updated_at=event.timestamp,
        )

    def apply(self, event: object, zone: ZoneInfo) -> None:
        match event:
            case Device.Restored():
                self.removed, self.online = False, True
                self.alias, self.model, self.device_type, self.mac = (
                    event.alias, event.model, event.device_type, event.mac
                )
                self.added_at = event.timestamp
            case Device.Renamed(alias=alias):
                self.alias = alias
            case Device.Removed():
                self.removed = True
            case Device.StateChanged(is_on=is_on, outlet_index=index):
                self.relays["plug" if index is None else str(index)] = is_on
            case Device.WentOffline():
                self.online = False
            case Device.CameOnline():
                self.online = True
            case MeterDay.ReadingRecorded():
                self._reading(event, zone)
                return
            case _:
                return
        self.updated_at = getattr(event, "timestamp")

    def _reading(self, event: MeterDay.ReadingRecorded, zone: ZoneInfo) -> None:
        """Newest reading wins the current state; the energy since the last one is split by local day and month."""
        at = event.measured_at
        if self.removed or (self.last_seen is not None and at <= self.last_seen):
            return
        if event.outlets:
            before = {o["outlet_id"]: o.get("total_wh") for o in self.outlets}
            used = sum(counter_delta_wh(before.get(o.outlet_id), o.total_wh) for o in event.outlets)
        else:
            used = counter_delta_wh(self.total_wh, event.total_wh)
        start = self.last_seen or at
        today, day_start, day_end = local_day(at, zone)
        month, month_start, month_end = local_month(at, zone)
        in_day = share_within(start, at, used, day_start, day_end)
        in_month = share_within(start, at, used, month_start, month_end)
        self.today_wh = (self.today_wh if self.today == today else 0.0) + in_day
        self.month_wh = (self.month_wh if self.month == month else 0.0) + in_month
        self.today, self.month = today, month
        self.is_on = event.is_on
        self.power_w, self.voltage_v, self.current_a = event.power_w, event.voltage_v, event.current_a
        self.total_wh, self.rssi = event.total_wh, event.rssi
        self.outlets = [msgspec.structs.asdict(o) for o in event.outlets]
        self.relays = {str(o.index): o.is_on for o in event.outlets} if event.outlets else {"plug": event.is_on}
        self.last_seen = at
        self.updated_at = event.timestamp


def _subject(event: object) -> UUID | None:
    """The device an event is about, or None for events this read model ignores."""
    if isinstance(event, MeterDay.ReadingRecorded):
        return event.device_id
    if isinstance(event, Device.Event):
        return event.originator_id
    return None


_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(ROW_FIELDS)}) VALUES ({', '.join('%s' for _ in ROW_FIELDS)}) "
    f"ON CONFLICT (device_id) DO UPDATE SET "
    + ", ".join(f"{f} = EXCLUDED.{f}" for f in ROW_FIELDS if f != "device_id")
)


class DevicesProjector:
    """Projects Device events and each device's newest reading into `wl_read.devices`.

    A batch loads the rows it touches once, folds its events into them in memory
    and writes each touched row once.
    """

    name = "devices"

    def __init__(self, zone: ZoneInfo | None = None) -> None:
        self.zone = zone or ZoneInfo("UTC")

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(DDL)

    def clear(self, cur: psycopg.Cursor[Any]) -> None:
        cur.execute(f"DELETE FROM {TABLE}")

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        wanted = {device_id for event in events if (device_id := _subject(event)) is not None}
        if not wanted:
            return
        rows: dict[UUID, DeviceRow] = {}
        cur.execute(f"SELECT {', '.join(ROW_FIELDS)} FROM {TABLE} WHERE device_id = ANY(%s)", (list(wanted),))
        for record in cur.fetchall():
            rows[record[0]] = DeviceRow(**dict(zip(ROW_FIELDS, record, strict=True)))
        touched: set[UUID] = set()
        for event in events:
            if isinstance(event, Device.Added):
                rows[event.originator_id] = DeviceRow.added(event)
            device_id = _subject(event)
            row = rows.get(device_id) if device_id is not None else None
            if row is None:
                continue
            row.apply(event, self.zone)
            touched.add(row.device_id)
        cur.executemany(_UPSERT, [self._values(rows[d]) for d in touched])

    @staticmethod
    def _values(row: DeviceRow) -> tuple[Any, ...]:
        values = msgspec.structs.asdict(row)
        values["relays"], values["outlets"] = Jsonb(row.relays), Jsonb(row.outlets)
        return tuple(values[f] for f in ROW_FIELDS)


_COLUMNS = (
    "device_id, address, alias, model, device_type, mac, online, is_on, relays, power_w, voltage_v, "
    "current_a, rssi, outlets, today, today_wh, month, month_wh, last_seen, added_at"
)


def _view(row: dict[str, Any], now: datetime, zone: ZoneInfo) -> DeviceView:
    day = now.astimezone(zone).date()
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


async def list_devices(conn: psycopg.AsyncConnection[Any], zone: ZoneInfo) -> list[DeviceView]:
    """Every present device, in the order they were added; today and this month in `zone`."""
    now = datetime.now(timezone.utc)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE NOT removed ORDER BY added_at, address")
        return [_view(row, now, zone) for row in await cur.fetchall()]


async def find_device(conn: psycopg.AsyncConnection[Any], key: str, zone: ZoneInfo) -> DeviceView | None:
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
    return _view(row, datetime.now(timezone.utc), zone) if row else None


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
