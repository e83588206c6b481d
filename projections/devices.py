"""The devices read model: one row per present device with its latest reading, and its queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import date, datetime, timezone
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg.rows import tuple_row

from domain.calendar import LocalCalendar, Period
from domain.control import ControlCommand
from domain.device import PUSH_ADDRESS_PREFIX, Device
from domain.energy import DEVICE_CHANNEL, DeviceFold, EnergyRules, Interval, MeterState, reading_of, split, step
from domain.meter import MeterDay
from domain.readings import OutletReading
from projections.tables import READ_SCHEMA, Table

TABLE = f"{READ_SCHEMA}.devices"


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


class DeviceRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.devices`, folded in memory from events (pure: no I/O).

    The fields are the table's columns, in order; `meter` is the energy fold's
    state, so a batch resumes the fold where the previous one left it.
    """

    device_id: UUID
    address: str
    alias: str
    model: str
    device_type: str
    mac: str
    removed: bool = False
    online: bool = True
    is_on: bool | None = None
    relays: dict[str, bool] = msgspec.field(default_factory=dict)
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    total_wh: float | None = None
    rssi: int | None = None
    outlets: list[OutletReading] = msgspec.field(default_factory=list)
    today: date | None = None
    today_wh: float = 0.0
    month: date | None = None
    month_wh: float = 0.0
    last_seen: datetime | None = None
    added_at: datetime
    updated_at: datetime
    meter: MeterState | None = None
    relays_since: dict[str, datetime] = msgspec.field(default_factory=dict)
    """When each relay last changed (as far as the log knows): the data API's `stateTime`."""
    confirmed_at: datetime | None = None
    """When a control command last confirmed the relays; older readings no longer set them."""

    def set_relays(self, states: dict[str, bool], at: datetime) -> None:
        for relay, is_on in states.items():
            if self.relays.get(relay) is not is_on:
                self.relays_since[relay] = at
            self.relays[relay] = is_on

    @classmethod
    def added(cls, event: Device.Added) -> DeviceRow:
        return cls(
            device_id=event.originator_id, address=event.address, alias=event.alias, model=event.model,
            device_type=event.device_type, mac=event.mac, added_at=event.timestamp, updated_at=event.timestamp,
        )

    def apply(self, event: object, calendar: LocalCalendar, rules: EnergyRules) -> None:
        if isinstance(event, MeterDay.ReadingRecorded):  # nearly every event: matched before the rest
            self._reading(event, calendar, rules)
            return
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
                self.set_relays({"plug" if index is None else str(index): is_on}, event.timestamp)
            case ControlCommand.ControlSucceeded(is_on=is_on, outlets=outlets):
                if outlets:
                    self.set_relays({str(o["index"]): bool(o["is_on"]) for o in outlets}, event.timestamp)
                else:
                    self.set_relays({"plug": is_on}, event.timestamp)
                self.confirmed_at = event.timestamp
            case Device.WentOffline():
                self.online = False
            case Device.CameOnline():
                self.online = True
            case MeterDay.ReadingRecorded():
                self._reading(event, calendar, rules)
                return
            case _:
                return
        self.updated_at = getattr(event, "timestamp")

    def _reading(self, event: MeterDay.ReadingRecorded, calendar: LocalCalendar, rules: EnergyRules) -> None:
        """The newest reading wins the current state; the energy fold gives today's and this month's energy.

        A reading not newer than the latest (late or duplicate) changes nothing.
        The device's MAC names the meter, so a restored device with another MAC
        starts a new counter. Within a batch a plug's readings fold the meter in a
        `DeviceFold` (see `_Meters`), which then holds `meter`.
        """
        at = event.measured_at
        if self.removed or (self.last_seen is not None and at <= self.last_seen):
            return
        meters = _METERS.get()
        fold = None
        if meters is not None:
            if event.outlets:
                meters.settle(self)
            elif (entry := meters.folds.get(id(self))) is not None and entry[1].meter == self.mac:
                fold = entry[1]
            else:
                fold = meters.fold(self, rules)
        day, month = calendar.day_and_month(at)
        closed = None if fold is None else fold.add(at, event.power_w, event.total_wh)
        if closed is not None and closed[0] >= day.start and self.today == day.label and self.month == month.label:
            # The usual reading: one interval inside the day (so inside the month) both totals are at.
            self.today_wh += closed[1]
            self.month_wh += closed[1]
        else:
            if fold is None:
                self.meter, intervals = step(self.meter, reading_of(event, self.mac), rules)
            else:
                intervals = [] if closed is None else [Interval(channel=DEVICE_CHANNEL, start=closed[0], end=at,
                                                                wh=closed[1])]  # fmt: skip
            self.today, self.today_wh = _current_total(self.today, self.today_wh, intervals, day, calendar.zone)
            self.month, self.month_wh = _current_total(self.month, self.month_wh, intervals, month, calendar.zone)
        self.is_on = event.is_on
        self.power_w, self.voltage_v, self.current_a = event.power_w, event.voltage_v, event.current_a
        self.total_wh, self.rssi = event.total_wh, event.rssi
        outlets = event.outlets
        if outlets or self.outlets:  # a plug's are none before and after
            self.outlets = list(outlets)
        if self.confirmed_at is None or at > self.confirmed_at:
            if outlets:
                self.set_relays({str(o.index): o.is_on for o in outlets}, at)
            elif self.relays.get("plug") is not event.is_on:  # `set_relays` for the plug's one relay
                self.relays_since["plug"] = at
                self.relays["plug"] = event.is_on
        self.last_seen = at
        self.updated_at = event.timestamp


def _current_total(
    label: date | None, wh: float, intervals: Iterable[Interval], current: Period, zone: ZoneInfo
) -> tuple[date, float]:
    """The energy so far in `current`, the period of the reading that closed `intervals`.

    A newer period starts from 0; the shares of older periods are left out.
    """
    if label is not None and label > current.label:
        return label, wh
    if label is None or label < current.label:
        label, wh = current.label, 0.0
    for interval in intervals:
        if interval.start >= current.start:
            wh += interval.wh
        else:
            wh += sum(s.wh for s in split(interval, zone, current.unit) if s.period.label == label)
    return label, wh


# Every reading rewrites its device's row. Half-empty pages let PostgreSQL put the new version
# beside the old one (a HOT update: no new index entries) and reclaim the old one when it next
# reads the page, instead of growing the table by a row per reading until a vacuum.
DEVICES = Table(
    TABLE, DeviceRow, key="device_id", unique=("address",),
    indexes=(f"ALTER TABLE {TABLE} SET (fillfactor = 50)",),
)  # fmt: skip


class _Meters:
    """The meter folds of a batch's rows, by the row's identity: a plug's readings fold its meter in a
    `DeviceFold` instead of building a `MeterState` for each, so `row.meter` is behind until the fold
    is settled, before anything else folds the meter (a strip's reading) and before the row is written.

    A reading of another MAC than the fold's (the device restored with another) settles it and starts
    another, as `step` starts another meter's state."""

    def __init__(self) -> None:
        self.folds: dict[int, tuple[DeviceRow, DeviceFold]] = {}

    def fold(self, row: DeviceRow, rules: EnergyRules) -> DeviceFold:
        """The row's fold, started afresh from `row.meter` unless it folds the row's MAC already."""
        entry = self.folds.get(id(row))
        if entry is not None and entry[1].meter == row.mac:
            return entry[1]
        self.settle(row)
        fold = DeviceFold(row.meter, row.mac, rules)
        self.folds[id(row)] = (row, fold)
        return fold

    def settle(self, row: DeviceRow) -> None:
        if (entry := self.folds.pop(id(row), None)) is not None:
            row.meter = entry[1].state()

    def settle_all(self) -> None:
        for row, fold in self.folds.values():
            row.meter = fold.state()
        self.folds.clear()


_METERS: ContextVar[_Meters | None] = ContextVar("wattledger_device_meters", default=None)
"""The meter folds of the batch `DevicesProjector.apply_batch` is folding, in its context only."""


def _subject(event: object) -> UUID | None:
    """The device an event is about, or None for events this read model ignores."""
    if isinstance(event, (MeterDay.ReadingRecorded, ControlCommand.ControlSucceeded)):
        return event.device_id
    if isinstance(event, Device.Event):
        return event.originator_id
    return None


class DevicesProjector:
    """Projects Device events and each device's newest reading into `wl_read.devices`.

    A batch loads the rows it touches once, folds its events into them in memory
    and writes each touched row once.
    """

    name = "devices"
    version = 3
    tables = (DEVICES,)

    def __init__(self, zone: ZoneInfo | None = None, rules: EnergyRules | None = None) -> None:
        self.zone = zone or ZoneInfo("UTC")
        self.rules = rules or EnergyRules()
        self.calendar = LocalCalendar(self.zone)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        reading = MeterDay.ReadingRecorded  # nearly every event: matched by its type before the rest
        # Readings find their row by the device id's int: a UUID hashes in Python code, an int in C.
        read: dict[int, UUID] = {}
        wanted: set[UUID] = set()
        for event in events:
            if type(event) is reading:
                read[event.device_id.int] = event.device_id
            elif (subject := _subject(event)) is not None:
                wanted.add(subject)
        wanted.update(read.values())
        if not wanted:
            return
        rows = DEVICES.take(cur, wanted)
        by_int = {device_id.int: row for device_id, row in rows.items()}
        calendar, rules = self.calendar, self.rules
        touched: dict[int, DeviceRow] = {}  # by the row's identity, for the same reason
        meters = _Meters()
        token = _METERS.set(meters)
        try:
            for event in events:
                if type(event) is reading:
                    if (row := by_int.get(event.device_id.int)) is not None:
                        row._reading(event, calendar, rules)
                        touched[id(row)] = row
                    continue
                if (device_id := _subject(event)) is None:
                    continue
                if isinstance(event, Device.Added):
                    rows[device_id] = by_int[device_id.int] = DeviceRow.added(event)
                if (row := rows.get(device_id)) is None:
                    continue
                meters.settle(row)
                row.apply(event, calendar, rules)
                touched[id(row)] = row
        finally:
            _METERS.reset(token)
        meters.settle_all()
        written = [rows[d] for d in {row.device_id for row in touched.values()}]
        DEVICES.write(cur, [DEVICES.values(row) for row in written])
        DEVICES.keep(written)


def _view(row: DeviceRow, now: datetime, zone: ZoneInfo) -> DeviceView:
    day = now.astimezone(zone).date()
    outlets = [
        OutletView(
            outlet_id=o.outlet_id,
            index=o.index,
            alias=o.alias,
            is_on=row.relays.get(str(o.index), o.is_on),
            current_power_w=o.power_w,
            voltage=o.voltage_v,
            current=o.current_a,
        )
        for o in row.outlets
    ]
    is_on = row.relays.get("plug", row.is_on) if not outlets else any(o.is_on for o in outlets)
    return DeviceView(
        device_id=row.device_id,
        device_ip=row.address,
        alias=row.alias,
        model=row.model,
        device_type=row.device_type,
        mac=row.mac,
        online=row.online,
        is_on=is_on,
        current_power_w=row.power_w,
        today_energy_kwh=round(row.today_wh / 1000, 6) if row.today == day else 0.0,
        month_energy_kwh=round(row.month_wh / 1000, 6) if row.month == day.replace(day=1) else 0.0,
        voltage=row.voltage_v,
        current=row.current_a,
        signal_strength=row.rssi,
        last_seen=row.last_seen,
        added_at=row.added_at,
        outlets=outlets,
    )


async def list_devices(conn: psycopg.AsyncConnection[Any], zone: ZoneInfo, now: datetime) -> list[DeviceView]:
    """Every present device, in the order they were added; today and this month (as of `now`) in `zone`."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{DEVICES.select} WHERE NOT removed ORDER BY added_at, address")
        return [_view(DEVICES.decode(record), now, zone) for record in await cur.fetchall()]


async def find_device(conn: psycopg.AsyncConnection[Any], key: str, zone: ZoneInfo, now: datetime) -> DeviceView | None:
    """A present device by its id or by its address (canonical spelling)."""
    try:
        device_id: UUID | None = UUID(key)
    except ValueError:
        device_id = None
    async with conn.cursor(row_factory=tuple_row) as cur:
        if device_id is not None:
            await cur.execute(f"{DEVICES.select} WHERE device_id = %s AND NOT removed", (device_id,))
        else:
            await cur.execute(f"{DEVICES.select} WHERE address = %s AND NOT removed", (key,))
        record = await cur.fetchone()
    return _view(DEVICES.decode(record), now, zone) if record else None


async def count_devices(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """(present devices, of which online)."""
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT count(*), count(*) FILTER (WHERE online) FROM {TABLE} WHERE NOT removed")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def last_poll(conn: psycopg.AsyncConnection[Any]) -> datetime | None:
    """When a present device was last heard from, the newest of them; None before any was."""
    cur = await conn.execute(f"SELECT max(last_seen) FROM {TABLE} WHERE NOT removed")
    row = await cur.fetchone()
    return row[0] if row else None


async def active_devices(conn: psycopg.AsyncConnection[Any]) -> list[tuple[UUID, str]]:
    """(id, address) of every present device that is polled: a push-only device is not."""
    cur = await conn.execute(
        f"SELECT device_id, address FROM {TABLE} WHERE NOT removed AND NOT starts_with(address, %s) ORDER BY address",
        (PUSH_ADDRESS_PREFIX,),
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def relay_times(conn: psycopg.AsyncConnection[Any], device_id: UUID) -> dict[str, datetime]:
    """When each relay of a present device last changed (`plug`, or outlet indexes as text)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{DEVICES.select} WHERE device_id = %s AND NOT removed", (device_id,))
        record = await cur.fetchone()
    return DEVICES.decode(record).relays_since if record else {}
