"""The energy read model: raw readings per channel, 5-minute buckets, hourly rollups, priced; and rate versions.

A channel is a plug's meter (`device`) or one outlet of a strip. Each batch:

1. keeps every new reading of a channel in `energy_readings` (a reading already
   kept changes nothing), with the fold's counted value after it;
2. refolds each touched channel from the last reading at or before the first
   bucket the new readings affect, so a late reading is folded with its
   neighbours, and rewrites that channel's buckets from there on;
3. prices every bucket from the earliest change on (a new rate version marks its
   `effective_from` as changed), by the version in force, time-of-use by the
   rate zone's local hour, tiers by the billing cycle's cumulative kWh over all
   devices;
4. rewrites the hourly rollups from the hour of the earliest change on.

Every figure is a function of the set of readings and rate versions, so a
rebuild from zero, or the same readings arriving in another order, gives the
same rows. A reading's power or counter that no meter measures (`domain.readings`
bounds, e.g. 1e300 W left by old data) is unknown here, and every amount, however
large, rounds: no stored value makes a query fail.

This module holds the tables and the projector; the queries over them are in
`projections.energy_queries`, the cost report in `projections.costs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import psycopg

from domain.device import Device
from domain.energy import DEVICE_CHANNEL, EnergyRules
from domain.meter import MeterDay
from domain.pricing import kwh_of, price_rows
from domain.rates import RateVersion, Tariff, version_of
from domain.readings import MAX_CHANNEL_POWER_W, MAX_COUNTER_WH, bounded
from domain.rollups import EPOCH, Bucket, ChannelReading, Folded, bucket_start, refold, rollup
from projections.tables import READ_SCHEMA, Table

HOUR = timedelta(hours=1)


class EnergyDeviceRow(msgspec.Struct, kw_only=True):
    """What readings need from their device: the meter (MAC) they count on, and its names."""

    device_id: UUID
    address: str
    alias: str
    mac: str
    device_type: str
    outlets: list[str]
    removed: bool = False
    session_threshold_w: float | None = None


class ReadingRow(msgspec.Struct, kw_only=True):
    """One channel's reading: what it measured, the counter value counted up to, the interval energy ending at it."""

    device_id: UUID
    channel: str
    at: datetime
    meter: str
    power_w: float | None
    total_wh: float | None
    is_on: bool
    counted_wh: float | None
    wh: float | None


class BucketRow(msgspec.Struct, kw_only=True):
    """One channel's 5-minute bucket (or hour, in the rollup table), priced."""

    device_id: UUID
    channel: str
    start: datetime
    wh: float
    on_s: float
    power_min: float | None
    power_max: float | None
    power_sum: float
    count: int
    gap: bool
    cost: Decimal


class RateRow(msgspec.Struct, kw_only=True):
    version: int
    effective_from: datetime
    rate: dict[str, Any]


_KEY = "device_id, channel, at"
_BKEY = "device_id, channel, start"
DEVICES = Table(f"{READ_SCHEMA}.energy_devices", EnergyDeviceRow, key="device_id")
READINGS = Table(
    f"{READ_SCHEMA}.energy_readings", ReadingRow, key=_KEY,
    indexes=(f"CREATE INDEX ON {READ_SCHEMA}.energy_readings (device_id, at)",),
)  # fmt: skip
BUCKETS = Table(
    f"{READ_SCHEMA}.energy_buckets", BucketRow, key=_BKEY,
    indexes=(f"CREATE INDEX ON {READ_SCHEMA}.energy_buckets (start)",),
)  # fmt: skip
HOURS = Table(
    f"{READ_SCHEMA}.energy_hours", BucketRow, key=_BKEY,
    indexes=(f"CREATE INDEX ON {READ_SCHEMA}.energy_hours (start)",),
)  # fmt: skip
RATES = Table(f"{READ_SCHEMA}.energy_rates", RateRow, key="version")

_RATE_DECODER = msgspec.json.Decoder(RateVersion)


def rate_of(row: RateRow) -> RateVersion:
    return _RATE_DECODER.decode(msgspec.json.encode(row.rate))


def _folded(row: ReadingRow) -> Folded:
    return Folded(
        reading=ChannelReading(at=row.at, meter=row.meter, power_w=row.power_w, total_wh=row.total_wh, is_on=row.is_on),
        counted_wh=row.counted_wh,
        wh=row.wh,
    )


def _reading(event: MeterDay.ReadingRecorded, mac: str, power_w: float | None, total_wh: float | None,
             is_on: bool) -> ChannelReading:  # fmt: skip
    return ChannelReading(
        at=event.measured_at, meter=mac, power_w=bounded(power_w, MAX_CHANNEL_POWER_W),
        total_wh=bounded(total_wh, MAX_COUNTER_WH), is_on=is_on,
    )  # fmt: skip


def _channel_readings(event: MeterDay.ReadingRecorded, mac: str) -> list[tuple[str, ChannelReading]]:
    if event.outlets:
        return [(o.outlet_id, _reading(event, mac, o.power_w, o.total_wh, o.is_on)) for o in event.outlets]
    return [(DEVICE_CHANNEL, _reading(event, mac, event.power_w, event.total_wh, event.is_on))]


class EnergyProjector:
    """Projects readings, devices and rate versions into the energy tables."""

    name = "energy"
    version = 4

    def __init__(self, rules: EnergyRules | None = None) -> None:
        self.rules = rules or EnergyRules()

    @property
    def tables(self) -> tuple[Table[Any], ...]:
        return (DEVICES, READINGS, BUCKETS, HOURS, RATES)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        device_ids = {
            e.originator_id if isinstance(e, Device.Event) else e.device_id
            for e in events
            if isinstance(e, (Device.Event, MeterDay.ReadingRecorded))
        }
        if not device_ids:
            if not any(isinstance(e, Tariff.RateSet) for e in events):
                return
        devices: dict[UUID, EnergyDeviceRow] = {}
        if device_ids:
            cur.execute(f"{DEVICES.select} WHERE device_id = ANY(%s)", (list(device_ids),))
            devices = {row.device_id: row for row in map(DEVICES.decode, cur.fetchall())}
        touched: set[UUID] = set()
        pending: dict[tuple[UUID, str], dict[datetime, ChannelReading]] = {}
        dirty: datetime | None = None
        for event in events:
            match event:
                case Device.Added():
                    devices[event.originator_id] = EnergyDeviceRow(
                        device_id=event.originator_id, address=event.address, alias=event.alias, mac=event.mac,
                        device_type=event.device_type, outlets=list(event.outlets),
                    )  # fmt: skip
                    touched.add(event.originator_id)
                case Device.Restored():
                    if (row := devices.get(event.originator_id)) is not None:
                        row.alias, row.mac, row.device_type = event.alias, event.mac, event.device_type
                        row.outlets, row.removed = list(event.outlets), False
                        touched.add(row.device_id)
                case Device.Renamed():
                    if (row := devices.get(event.originator_id)) is not None:
                        row.alias = event.alias
                        touched.add(row.device_id)
                case Device.Removed():
                    if (row := devices.get(event.originator_id)) is not None:
                        row.removed = True
                        touched.add(row.device_id)
                case Device.SessionThresholdSet():
                    if (row := devices.get(event.originator_id)) is not None:
                        row.session_threshold_w = event.threshold_w
                        touched.add(row.device_id)
                case MeterDay.ReadingRecorded():
                    device = devices.get(event.device_id)
                    mac = device.mac if device is not None else str(event.device_id)
                    for channel, reading in _channel_readings(event, mac):
                        pending.setdefault((event.device_id, channel), {}).setdefault(reading.at, reading)
                case Tariff.RateSet():
                    version = version_of(event)
                    cur.execute(RATES.upsert, RATES.values(RateRow(
                        version=version.version, effective_from=version.effective_from,
                        rate=msgspec.to_builtins(version),
                    )))  # fmt: skip
                    dirty = _earliest(dirty, version.effective_from)
        if touched:
            cur.executemany(DEVICES.upsert, [DEVICES.values(devices[d]) for d in touched])
        fresh: list[BucketRow] = []
        for (device_id, channel), readings in pending.items():
            changed = self._channel(cur, device_id, channel, readings, fresh)
            dirty = _earliest(dirty, changed)
        if dirty is not None:
            self._price(cur, dirty, fresh)
            self._hours(cur, dirty)

    def _channel(
        self,
        cur: psycopg.Cursor[Any],
        device_id: UUID,
        channel: str,
        new: dict[datetime, ChannelReading],
        fresh: list[BucketRow],
    ) -> datetime | None:
        """Keep a channel's new readings; its buckets from the first one they affect are dropped and the
        recomputed ones added to `fresh` (priced and written by the caller). Returns that first bucket."""
        cur.execute(f"SELECT max(at) FROM {READINGS.name} WHERE device_id = %s AND channel = %s", (device_id, channel))
        row = cur.fetchone()
        latest: datetime | None = row[0] if row else None
        first = min(new)
        if latest is not None and first <= latest:
            cur.execute(
                f"SELECT at FROM {READINGS.name} WHERE device_id = %s AND channel = %s AND at = ANY(%s)",
                (device_id, channel, [at for at in new if at <= latest]),
            )
            for (at,) in cur.fetchall():
                new.pop(at, None)
            if not new:
                return None
            first = min(new)
            cur.execute(
                f"SELECT max(at) FROM {READINGS.name} WHERE device_id = %s AND channel = %s AND at < %s",
                (device_id, channel, first),
            )
            row = cur.fetchone()
            latest = row[0] if row else None
        since = bucket_start(latest if latest is not None else first)
        cur.execute(
            f"{READINGS.select} WHERE device_id = %s AND channel = %s AND at <= %s ORDER BY at DESC LIMIT 1",
            (device_id, channel, since),
        )
        start_record = cur.fetchone()
        start = _folded(READINGS.decode(start_record)) if start_record else None
        cur.execute(
            "SELECT at, meter, power_w, total_wh, is_on, counted_wh, wh "
            f"FROM {READINGS.name} WHERE device_id = %s AND channel = %s AND at > %s ORDER BY at",
            (device_id, channel, start.reading.at if start is not None else EPOCH - HOUR),
        )
        stored = {
            at: (ChannelReading(at=at, meter=m, power_w=p, total_wh=t, is_on=o), counted, wh)
            for at, m, p, t, o, counted, wh in cur.fetchall()
        }
        merged = {at: item[0] for at, item in stored.items()}
        merged.update(new)
        folded, intervals = refold(start, [merged[at] for at in sorted(merged)], self.rules, channel)
        rewritten: list[datetime] = []
        rows: list[tuple[Any, ...]] = []
        for item in folded:
            r = item.reading
            old = stored.get(r.at)
            if old is not None and old[1] == item.counted_wh and old[2] == item.wh:
                continue
            if old is not None:
                rewritten.append(r.at)
            rows.append((device_id, channel, r.at, r.meter, r.power_w, r.total_wh, r.is_on, item.counted_wh, item.wh))
        if rewritten:
            cur.execute(
                f"DELETE FROM {READINGS.name} WHERE device_id = %s AND channel = %s AND at = ANY(%s)",
                (device_id, channel, rewritten),
            )
        _copy(cur, READINGS, rows)
        buckets = rollup(([start] if start is not None else []) + folded, intervals, self.rules, since)
        cur.execute(
            f"DELETE FROM {BUCKETS.name} WHERE device_id = %s AND channel = %s AND start >= %s",
            (device_id, channel, since),
        )
        fresh += [_bucket_row(device_id, channel, b) for b in buckets.values()]
        return since

    def _price(self, cur: psycopg.Cursor[Any], since: datetime, fresh: list[BucketRow]) -> None:
        """Price the fresh buckets and every stored one from `since` on; writes the fresh ones and the
        stored costs that change."""
        cur.execute(RATES.select)
        versions = [rate_of(RATES.decode(r)) for r in cur.fetchall()]
        cur.execute(
            f"SELECT device_id, channel, start, wh, cost FROM {BUCKETS.name} WHERE start >= %s",
            (since,),
        )
        records = cur.fetchall()

        def used_before(cycle: datetime, first: datetime) -> Decimal:
            """Summed as the pricing sums (exact decimals), so any batching gives the same costs."""
            cur.execute(f"SELECT wh FROM {BUCKETS.name} WHERE start >= %s AND start < %s", (cycle, first))
            return sum((kwh_of(wh) for (wh,) in cur.fetchall()), Decimal(0))

        rows = [((d, c, s), s, wh) for d, c, s, wh, _ in records]
        rows += [((b.device_id, b.channel, b.start), b.start, b.wh) for b in fresh]
        rows.sort(key=lambda r: (r[1], str(r[0][0]), r[0][1]))
        costs = price_rows(rows, versions, used_before)
        changes = [(costs[(d, c, s)], d, c, s) for d, c, s, _, cost in records if costs[(d, c, s)] != cost]
        cur.executemany(
            f"UPDATE {BUCKETS.name} SET cost = %s WHERE device_id = %s AND channel = %s AND start = %s", changes
        )
        for bucket in fresh:
            bucket.cost = costs[(bucket.device_id, bucket.channel, bucket.start)]
        _copy(cur, BUCKETS, [BUCKETS.values(b) for b in fresh])

    def _hours(self, cur: psycopg.Cursor[Any], since: datetime) -> None:
        """Rewrite the hourly rollups from the hour containing `since` on."""
        hour = since.replace(minute=0, second=0, microsecond=0)
        cur.execute(f"DELETE FROM {HOURS.name} WHERE start >= %s", (hour,))
        cur.execute(
            f"INSERT INTO {HOURS.name} ({', '.join(HOURS.columns)}) "
            "SELECT device_id, channel, date_bin('1 hour', start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour, "
            "sum(wh), sum(on_s), min(power_min), max(power_max), sum(power_sum), sum(count), bool_or(gap), sum(cost) "
            f"FROM {BUCKETS.name} WHERE start >= %s GROUP BY device_id, channel, hour",
            (hour,),
        )


def _copy(cur: psycopg.Cursor[Any], table: Table[Any], rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows (in the table's column order) with COPY: several times faster than row-by-row inserts."""
    if not rows:
        return
    with cur.copy(f"COPY {table.name} ({', '.join(table.columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _bucket_row(device_id: UUID, channel: str, bucket: Bucket) -> BucketRow:
    return BucketRow(
        device_id=device_id, channel=channel, start=bucket.start, wh=bucket.wh, on_s=bucket.on_s,
        power_min=bucket.power_min, power_max=bucket.power_max, power_sum=bucket.power_sum, count=bucket.count,
        gap=bucket.gap, cost=Decimal(0),
    )  # fmt: skip
