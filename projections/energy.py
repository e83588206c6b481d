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

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from msgspec.structs import astuple

from domain.device import Device
from domain.energy import DEVICE_CHANNEL, EnergyRules
from domain.meter import MeterDay
from domain.pricing import PRICING, STORED, Priced, PriceWalk, bucket_costs, kwh_of, tier_reach
from domain.rates import RateVersion, Tariff, version_of
from domain.readings import MAX_CHANNEL_POWER_W, MAX_COUNTER_WH, bounded
from domain.rollups import BUCKET, EPOCH, Bucket, Kept, Measured, Row, bucket_start, fold_buckets
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


class FleetRow(msgspec.Struct, kw_only=True):
    """The whole fleet's kWh in one 5-minute bucket start (summed exactly), how many channel buckets it holds,
    its cost, and the one unit price its kWh are charged at (None: it crosses a tier limit and is shared)."""

    start: datetime
    kwh: Decimal
    buckets: int
    cost: Decimal
    price: Decimal | None


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
FLEET = Table(f"{READ_SCHEMA}.energy_fleet", FleetRow, key="start")

_RATE_DECODER = msgspec.json.Decoder(RateVersion)


def rate_of(row: RateRow) -> RateVersion:
    return _RATE_DECODER.decode(msgspec.json.encode(row.rate))


def _reading(at: datetime, mac: str, power_w: float | None, total_wh: float | None, is_on: bool) -> Measured:
    return at, mac, bounded(power_w, MAX_CHANNEL_POWER_W), bounded(total_wh, MAX_COUNTER_WH), is_on


Removed = tuple[UUID, str, datetime, float]
"""A stored bucket a refold replaced: device, channel, start, Wh."""
Span = tuple[UUID, str, datetime, datetime | None]
"""A refolded channel's buckets: device, channel, since, until (None: every bucket from since on)."""


class _Channel(msgspec.Struct, kw_only=True):
    """One channel's part of a batch: its new readings, and where its refold starts (`since`, a bucket start)."""

    device_id: UUID
    channel: str
    new: dict[datetime, Measured]
    since: datetime | None = None
    in_order: bool = False
    """Every new reading is newer than every stored one (a replay's usual case)."""
    tail: list[Kept] | None = None
    """The channel's stored readings from the last one at or before the start of its newest one's bucket on, as
    `_window` gives them: what a replay keeps between sections (`Table.kept_by_replay`), and what `_refold` leaves."""


class EnergyProjector:
    """Projects readings, devices and rate versions into the energy tables.

    A batch costs a fixed number of statements whatever the number of channels it
    touches: each step reads or writes every channel at once (arrays unnested in
    SQL, COPY for new rows).
    """

    name = "energy"
    version = 5

    def __init__(self, rules: EnergyRules | None = None) -> None:
        self.rules = rules or EnergyRules()

    @property
    def tables(self) -> tuple[Table[Any], ...]:
        return (DEVICES, READINGS, BUCKETS, HOURS, RATES, FLEET)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        # Devices are told apart by their UUIDs' numbers within a batch: a UUID hashes in Python, its number in C.
        device_ids = {e.device_id.int: e.device_id for e in events if isinstance(e, MeterDay.ReadingRecorded)}
        device_ids.update({e.originator_id.int: e.originator_id for e in events if isinstance(e, Device.Event)})
        if not device_ids:
            if not any(isinstance(e, Tariff.RateSet) for e in events):
                return
        devices: dict[UUID, EnergyDeviceRow] = DEVICES.take(cur, device_ids.values()) if device_ids else {}
        touched: set[UUID] = set()
        pending: dict[tuple[UUID, str], dict[datetime, Measured]] = {}
        macs: dict[int, str] = {}
        """Each device's meter as its row gives it now (a device added or restored is dropped from here)."""
        plugs: dict[int, dict[datetime, Measured]] = {}
        """Each plug's new readings (its channel's in `pending`)."""
        repriced_from: datetime | None = None
        for event in events:
            if isinstance(event, MeterDay.ReadingRecorded):  # nearly every event: matched before the rest
                device_id = event.device_id
                if (mac := macs.get(number := device_id.int)) is None:
                    device = devices.get(device_id)
                    mac = macs[number] = device.mac if device is not None else str(device_id)
                at = event.measured_at
                if event.outlets:
                    for o in event.outlets:
                        new = pending.setdefault((device_id, o.outlet_id), {})
                        if at not in new:
                            new[at] = _reading(at, mac, o.power_w, o.total_wh, o.is_on)
                else:
                    if (plug := plugs.get(number)) is None:
                        plug = plugs[number] = pending.setdefault((device_id, DEVICE_CHANNEL), {})
                    if at not in plug:
                        plug[at] = _reading(at, mac, event.power_w, event.total_wh, event.is_on)
                continue
            if isinstance(event, Device.Event):
                macs.pop(event.originator_id.int, None)
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
                case Tariff.RateSet():
                    version = version_of(event)
                    cur.execute(RATES.upsert, RATES.values(RateRow(
                        version=version.version, effective_from=version.effective_from,
                        rate=msgspec.to_builtins(version),
                    )))  # fmt: skip
                    repriced_from = _earliest(repriced_from, version.effective_from)
        if touched:
            DEVICES.write(cur, [DEVICES.values(devices[d]) for d in touched])
        channels = [_Channel(device_id=d, channel=c, new=new) for (d, c), new in pending.items()]
        tails = READINGS.kept_by_replay()
        fresh, removed, spans = self._fold(cur, channels, tails)
        if fresh or removed or repriced_from is not None:
            hours = self._price(cur, fresh, removed, repriced_from)
            BUCKETS.copy_in(cur, map(astuple, fresh))
            self._roll_hours(cur, fresh, removed, spans, hours)
        # Last, once everything is written: a batch that fails before this leaves its devices and its channels'
        # tails out of what a replay keeps, and the next batch reads them from the tables.
        DEVICES.keep(devices.values())
        if tails is not None:
            tails.update({(c.device_id, c.channel): c.tail for c in channels if c.in_order and c.tail is not None})

    def _fold(
        self, cur: psycopg.Cursor[Any], channels: list[_Channel], tails: dict[Any, Any] | None = None
    ) -> tuple[list[BucketRow], list[Removed], list[Span]]:
        """Keep the channels' new readings and refold each from the last reading at or before the first bucket
        its new readings affect. Returns the recomputed buckets from there on (unpriced, not written yet), the
        stored buckets they replace (deleted), as (device, channel, start, Wh), and each refolded channel's span
        (device, channel, since, until): every bucket of the channel in [since, until) is among the recomputed
        ones (until None: every bucket from since on).

        `tails`, given by a replay that alone writes these tables, holds each channel's stored tail (see
        `_Channel.tail`) as the last batch left it: a channel found there whose new readings are all newer is
        refolded from it without reading the table. The tails of this batch's channels are taken out; the
        caller puts back those of the channels refolded in order once the batch is written."""
        if not channels:
            return [], [], []
        asked = channels
        if tails:
            asked = []
            for channel in channels:
                tail = tails.pop((channel.device_id, channel.channel), None)
                if tail is not None and min(channel.new) > tail[-1][0]:
                    channel.since, channel.tail, channel.in_order = bucket_start(tail[-1][0]), tail, True
                else:
                    asked.append(channel)
        late: list[_Channel] = []
        if asked:
            cur.execute(
                "SELECT (SELECT max(at) FROM {r} WHERE device_id = n.d AND channel = n.c) "
                "FROM unnest({a}::uuid[], %s::text[]) WITH ORDINALITY AS n(d, c, i) ORDER BY n.i".format(
                    r=READINGS.name, a=_ARRAY),
                (_joined(c.device_id for c in asked), [c.channel for c in asked]),
            )
            for channel, (latest,) in zip(asked, cur.fetchall(), strict=True):
                if latest is not None and min(channel.new) <= latest:
                    late.append(channel)
                else:
                    channel.since = bucket_start(latest if latest is not None else min(channel.new))
                    channel.in_order = True
        if late:
            self._drop_kept(cur, late)
        channels = [c for c in channels if c.new]
        if not channels:
            return [], [], []
        fresh: list[BucketRow] = []
        rows: list[tuple[Any, ...]] = []
        rewritten: list[tuple[UUID, str, datetime]] = []
        spans: list[Span] = []
        bounded = True
        while channels:
            unsettled: list[_Channel] = []
            read = [c for c in channels if c.tail is None]
            stored = iter(self._window(cur, read, bounded=bounded) if read else [])
            for channel in channels:
                records = list(channel.tail) if channel.tail is not None else next(stored)
                span = self._refold(channel, records, fresh, rows, rewritten, bounded=bounded)
                if span is None:
                    unsettled.append(channel)
                else:
                    spans.append((channel.device_id, channel.channel, *span))
            channels, bounded = unsettled, False
        if rewritten:
            cur.execute(
                f"DELETE FROM {READINGS.name} r USING unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[]) "
                "AS n(d, c, a) WHERE r.device_id = n.d AND r.channel = n.c AND r.at = n.a",
                (_joined(r[0] for r in rewritten), [r[1] for r in rewritten], _joined(r[2] for r in rewritten)),
            )
        READINGS.copy_in(cur, rows)
        cur.execute(
            f"DELETE FROM {BUCKETS.name} b USING unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[], "
            f"{_ARRAY}::timestamptz[]) AS n(d, c, s, u) WHERE b.device_id = n.d AND b.channel = n.c AND b.start >= n.s "
            "AND (n.u IS NULL OR b.start < n.u) RETURNING b.device_id, b.channel, b.start, b.wh",
            (_joined(s[0] for s in spans), [s[1] for s in spans], _joined(s[2] for s in spans),
             _joined(s[3] for s in spans)),
        )
        return fresh, [(d, c, start, wh) for d, c, start, wh in cur.fetchall()], spans

    def _window(self, cur: psycopg.Cursor[Any], channels: list[_Channel], *, bounded: bool) -> list[list[tuple[Any, ...]]]:
        """Each channel's stored readings its refold needs: from the last one at or before `since` on; when
        `bounded`, only up to the first reading at or past the end of the bucket of the first stored reading
        after its newest new one (past that, the fold is expected to give what is stored)."""
        cur.execute(
            "SELECT n.i, r.at, r.meter, r.power_w, r.total_wh, r.is_on, r.counted_wh, r.wh "
            "FROM unnest({a}::uuid[], %s::text[], {a}::timestamptz[], {a}::timestamptz[]) WITH ORDINALITY "
            "AS n(d, c, s, l, i) "
            "CROSS JOIN LATERAL (SELECT date_bin('5 minutes', (SELECT min(at) FROM {r} WHERE device_id = n.d "
            "AND channel = n.c AND at > n.l), TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '5 minutes' AS u) AS w "
            "CROSS JOIN LATERAL (SELECT * FROM {r} WHERE device_id = n.d AND channel = n.c AND at >= "
            "coalesce((SELECT max(at) FROM {r} WHERE device_id = n.d AND channel = n.c AND at <= n.s), '-infinity') "
            "AND at <= coalesce((SELECT min(at) FROM {r} WHERE device_id = n.d AND channel = n.c AND at >= w.u), "
            "'infinity') ORDER BY at) AS r ORDER BY n.i, r.at".format(r=READINGS.name, a=_ARRAY),
            (_joined(c.device_id for c in channels), [c.channel for c in channels], _joined(c.since for c in channels),
             _joined(max(c.new) if bounded else datetime.max.replace(tzinfo=UTC) for c in channels)),
        )  # fmt: skip
        stored: list[list[tuple[Any, ...]]] = [[] for _ in channels]
        for index, *record in cur.fetchall():
            stored[index - 1].append(tuple(record))
        return stored

    def _refold(
        self, channel: _Channel, records: list[tuple[Any, ...]], fresh: list[BucketRow], rows: list[tuple[Any, ...]],
        rewritten: list[tuple[UUID, str, datetime]], *, bounded: bool,
    ) -> tuple[datetime, datetime | None] | None:
        """Refold a channel over its stored `records` and new readings: the readings to write go to `rows` (and
        `rewritten` where one is stored), its buckets in [since, until) to `fresh`. Returns (since, until), until
        None for every bucket on; None when a bounded window proved too short (the fold did not meet what is
        stored at the first stored reading after the new ones), and nothing was added."""
        since, new = channel.since, channel.new
        assert since is not None
        start: Kept | None = records.pop(0) if records and records[0][0] <= since else None
        kept = {r[0]: r for r in records}
        if channel.in_order:  # every new reading is newer than every stored one
            readings = [r[:5] for r in records] + [new[at] for at in sorted(new)]
        else:
            merged: dict[datetime, Measured] = {r[0]: r[:5] for r in records}
            merged.update(new)
            readings = [merged[at] for at in sorted(merged)]
        device_id, name = channel.device_id, channel.channel
        folded, buckets = fold_buckets(start, readings, self.rules, since, device_id, name)
        settled_at: datetime | None = None
        if bounded and not channel.in_order:
            newest = max(new)
            settled_at = next((r[0] for r in records if r[0] > newest), None)
        changed: list[datetime] = []
        written: list[Row] = []
        # In order, every reading is folded (none is older than the one before) and the stored ones come first.
        compared = len(records) if channel.in_order and len(folded) == len(readings) else len(folded)
        for row in folded[:compared]:
            at = row[2]
            old = kept.get(at)
            if old is not None and old[5] == row[7] and old[6] == row[8]:
                continue
            if at == settled_at:
                return None
            if old is not None:
                changed.append(at)
            written.append(row)
        rows += written
        rows += folded[compared:]
        rewritten += [(device_id, name, at) for at in changed]
        until = bucket_start(settled_at) + BUCKET if settled_at is not None else None
        if until is None and (folded or start is not None):
            channel.tail = _tail(start, folded)
        fresh += [_bucket_row(device_id, name, b) for b in buckets if until is None or b.start < until]
        return since, until

    def _drop_kept(self, cur: psycopg.Cursor[Any], channels: list[_Channel]) -> None:
        """Drop the new readings already kept (late or repeated ones), and set each channel's `since`: the
        bucket of its last kept reading before its first new one."""
        probe = [(i, c.device_id, c.channel, at) for i, c in enumerate(channels) for at in c.new]
        cur.execute(
            f"SELECT n.i, n.a FROM unnest(%s::int[], %s::uuid[], %s::text[], %s::timestamptz[]) AS n(i, d, c, a) "
            f"JOIN {READINGS.name} r ON r.device_id = n.d AND r.channel = n.c AND r.at = n.a",
            tuple(map(list, zip(*probe, strict=True))),
        )
        for i, at in cur.fetchall():
            channels[i].new.pop(at, None)
        live = [c for c in channels if c.new]
        if not live:
            return
        cur.execute(
            f"SELECT (SELECT max(at) FROM {READINGS.name} WHERE device_id = n.d AND channel = n.c AND at < n.f) "
            "FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[]) WITH ORDINALITY AS n(d, c, f, i) ORDER BY n.i",
            ([c.device_id for c in live], [c.channel for c in live], [min(c.new) for c in live]),
        )
        for channel, (before,) in zip(live, cur.fetchall(), strict=True):
            channel.since = bucket_start(before if before is not None else min(channel.new))

    def _price(
        self,
        cur: psycopg.Cursor[Any],
        fresh: list[BucketRow],
        removed: list[tuple[UUID, str, datetime, float]],
        repriced_from: datetime | None,
    ) -> set[tuple[UUID, str, datetime]]:
        """Price the fresh buckets and keep the fleet's running totals; reprice only the stored buckets whose
        price moved. Returns the hours of the stored buckets repriced.

        The fleet's kWh of each bucket start changes by what the fresh buckets add and
        the removed ones took away. A simple or time-of-use bucket is priced alone. Under
        tiers, the cycle's later fleet buckets (from `energy_fleet`, never the channels'
        buckets) are walked from the first change with the cycle's running total: a
        stored channel bucket is repriced only where its fleet bucket's tier moves or
        crosses a limit. A new rate version reprices everything from its start.
        """
        cur.execute(RATES.select)
        versions = [rate_of(RATES.decode(r)) for r in cur.fetchall()]
        with localcontext(PRICING):
            nothing = (Decimal(0), 0)
            delta: dict[datetime, tuple[Decimal, int]] = {}
            fresh_kwh = [kwh_of(b.wh) for b in fresh]
            for b, part in zip(fresh, fresh_kwh, strict=True):
                kwh, count = delta.get(b.start, nothing)
                delta[b.start] = (kwh + part, count + 1)
            for _, _, start, wh in removed:
                kwh, count = delta.get(start, nothing)
                delta[start] = (kwh - kwh_of(wh), count - 1)
            changed = sorted(delta)
            fleet, spans = self._fleet(cur, changed, repriced_from, versions)
            for start, (kwh, count) in delta.items():
                old = fleet.get(start)
                fleet[start] = FleetRow(
                    start=start, kwh=(old.kwh if old else Decimal(0)) + kwh, buckets=(old.buckets if old else 0) + count,
                    cost=old.cost if old else Decimal(0), price=old.price if old else Decimal(0),
                )  # fmt: skip

            def used_before(cycle: datetime, start: datetime) -> Decimal:
                inside = changed[bisect_left(changed, cycle) : bisect_left(changed, start)]
                cur.execute(
                    f"SELECT sum(kwh) FROM {FLEET.name} WHERE start >= %s AND start < %s "
                    f"AND start <> ALL({_ARRAY}::timestamptz[])",
                    (cycle, start, _joined(inside)),
                )  # fmt: skip
                row = cur.fetchone()
                stored = None if row is None or row[0] is None else Decimal(row[0])
                return _total(stored, [fleet[s].kwh for s in inside if fleet[s].buckets > 0])

            moved: list[datetime] = []
            changes: list[FleetRow] = []
            span = -1
            walk = PriceWalk(versions, used_before)
            for start in sorted(fleet):
                row = fleet[start]
                while span + 1 < len(spans) and spans[span + 1][0] <= start:
                    span += 1
                    walk = PriceWalk(versions, used_before)
                if span < 0 or start >= spans[span][1]:
                    walk = PriceWalk(versions, used_before)
                priced = walk.step(start, row.kwh)
                forced = repriced_from is not None and start >= repriced_from
                had_stored = row.buckets - delta.get(start, nothing)[1] > 0
                if had_stored and (forced or priced.price is None or row.price is None or priced.price != row.price):
                    moved.append(start)
                if start in delta or priced.cost != row.cost or priced.price != row.price:
                    row.cost, row.price = priced
                    changes.append(row)
            self._write_fleet(cur, [fleet[s].start for s in delta if fleet[s].buckets <= 0], changes)
            # A bucket at one price costs its kWh at that price, whatever the other channels' buckets; those
            # of a bucket crossing a tier limit share its cost, in one order every time.
            order: dict[tuple[UUID, str], tuple[str, str]] = {}
            shared: dict[datetime, list[tuple[tuple[str, str], tuple[UUID, str], Decimal, BucketRow | None]]] = {}
            for b, part in zip(fresh, fresh_kwh, strict=True):
                if (price := fleet[b.start].price) is not None:
                    b.cost = part * price
                    continue
                key = (b.device_id, b.channel)
                if (sort_key := order.get(key)) is None:
                    sort_key = order[key] = (str(b.device_id), b.channel)
                if (parts := shared.get(b.start)) is None:
                    parts = shared[b.start] = []
                parts.append((sort_key, key, part, b))
            stored: dict[tuple[UUID, str, datetime], Decimal] = {}
            updates: list[tuple[UUID, str, datetime, Decimal]] = []
            if moved:
                cur.execute(
                    f"SELECT device_id, channel, start, wh, cost FROM {BUCKETS.name} "
                    f"WHERE start = ANY({_ARRAY}::timestamptz[])",
                    (_joined(moved),),
                )
                for d, c, s, wh, cost in cur.fetchall():
                    if (price := fleet[s].price) is not None:
                        if cost != (new := kwh_of(wh) * price):
                            updates.append((d, c, s, new))
                        continue
                    if (sort_key := order.get((d, c))) is None:
                        sort_key = order[(d, c)] = (str(d), c)
                    shared.setdefault(s, []).append((sort_key, (d, c), kwh_of(wh), None))
                    stored[(d, c, s)] = cost
            for start, parts in shared.items():
                if len(parts) > 1:
                    parts.sort(key=_first)
                row = fleet[start]
                costs = bucket_costs([(i, kwh) for i, (_, _, kwh, _) in enumerate(parts)], Priced(row.cost, row.price))
                for (i, cost), (_, (d, c), _, bucket) in zip(costs, parts, strict=True):
                    if bucket is not None:
                        bucket.cost = cost
                    elif stored[(d, c, start)] != cost:
                        updates.append((d, c, start, cost))
        if updates:
            cur.execute(
                f"UPDATE {BUCKETS.name} b SET cost = u.cost "
                f"FROM unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[], {_ARRAY}::numeric[]) "
                "AS u(d, c, s, cost) WHERE b.device_id = u.d AND b.channel = u.c AND b.start = u.s",
                (_joined(u[0] for u in updates), [u[1] for u in updates], _joined(u[2] for u in updates),
                 _joined(u[3] for u in updates)),
            )
        return {(d, c, _hour(s)) for d, c, s, _ in updates}

    def _fleet(
        self, cur: psycopg.Cursor[Any], changed: list[datetime], repriced_from: datetime | None,
        versions: list[RateVersion],
    ) -> tuple[dict[datetime, FleetRow], list[tuple[datetime, datetime]]]:
        """The fleet buckets a batch must price again, and the spans they fill without a hole: the changed
        starts; under tiers every fleet bucket from each change to a cycle's reach past it; and everything
        from a new rate version's start. Each span is walked on its own, from the totals stored before it."""
        spans: list[tuple[datetime, datetime]] = []
        reach: datetime | None = None
        same_until: datetime | None = None
        for start in changed:
            if same_until is None or start >= same_until:
                reach, same_until = tier_reach(versions, start)
            if reach is None:
                continue
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(reach, spans[-1][1]))
            else:
                spans.append((start, reach))
        if repriced_from is not None:
            spans = [(s, e) for s, e in spans if s < repriced_from]
            spans = [(s, min(e, repriced_from)) for s, e in spans] + [(repriced_from, datetime.max.replace(tzinfo=UTC))]
        cur.execute(
            f"{FLEET.select} WHERE start = ANY({_ARRAY}::timestamptz[]) UNION "
            f"SELECT f.* FROM unnest(%s::timestamptz[], %s::timestamptz[]) AS w(a, b) CROSS JOIN LATERAL "
            f"(SELECT * FROM {FLEET.name} WHERE start >= w.a AND start < w.b) AS f",
            (_joined(changed), [s for s, _ in spans], [e for _, e in spans]),
        )
        rows = (FleetRow(start=s, kwh=k, buckets=n, cost=c, price=p) for s, k, n, c, p in cur.fetchall())
        return {row.start: row for row in rows}, spans

    def _write_fleet(self, cur: psycopg.Cursor[Any], gone: list[datetime], rows: list[FleetRow]) -> None:
        """Store the walked fleet buckets whose kWh, bucket count, cost or price changed, in one statement;
        drop the buckets left empty."""
        if gone:
            cur.execute(f"DELETE FROM {FLEET.name} WHERE start = ANY({_ARRAY}::timestamptz[])", (_joined(gone),))
        rows = [r for r in rows if r.buckets > 0]
        if rows:
            cur.execute(
                f"INSERT INTO {FLEET.name} ({', '.join(FLEET.columns)}) "
                f"SELECT * FROM unnest({_ARRAY}::timestamptz[], {_ARRAY}::numeric[], {_ARRAY}::int[], "
                f"{_ARRAY}::numeric[], {_ARRAY}::numeric[]) "
                "ON CONFLICT (start) DO UPDATE SET kwh = EXCLUDED.kwh, buckets = EXCLUDED.buckets, "
                "cost = EXCLUDED.cost, price = EXCLUDED.price",
                (_joined(r.start for r in rows), _joined(r.kwh for r in rows), _joined(r.buckets for r in rows),
                 _joined(r.cost for r in rows), _joined(r.price for r in rows)),
            )  # fmt: skip

    def _roll_hours(
        self, cur: psycopg.Cursor[Any], fresh: list[BucketRow], removed: list[Removed], spans: list[Span],
        repriced: set[tuple[UUID, str, datetime]],
    ) -> None:
        """Roll up again every hour the batch changed: the hours of the fresh and removed buckets and of the
        stored buckets repriced (`repriced`).

        An hour wholly inside a channel's refolded span holds only buckets just computed, so it
        is summed here from them, as the SQL rollup sums them (floats in start order, costs
        exactly), and written with COPY once the span's stored hours are deleted, without
        reading a bucket back. The other hours (a span's partial first and last hour, the
        repriced ones) are rolled up in SQL from the stored buckets.
        """
        whole: dict[tuple[UUID, str], tuple[datetime, datetime | None]] = {}
        for d, c, since, until in spans:
            low = _hour(since)
            if low != since:
                low += HOUR
            high = None if until is None else _hour(until)
            if high is None or low < high:
                whole[(d, c)] = (low, high)
        summed: dict[tuple[UUID, str, datetime], list[BucketRow]] = {}
        others = set(repriced)
        device_id: UUID | None = None
        channel = ""
        span: tuple[datetime, datetime | None] | None = None
        hour = hour_end = EPOCH
        parts: list[BucketRow] | None = None
        # `fresh` holds each channel's buckets together in start order: its span is looked up, and each hour's
        # place found, once for all of them.
        for b in fresh:
            if b.device_id is not device_id or b.channel is not channel:
                device_id, channel = b.device_id, b.channel
                span = whole.get((device_id, channel))
                hour_end = hour
            if not hour <= b.start < hour_end:
                hour = _hour(b.start)
                hour_end = hour + HOUR
                key = (device_id, channel, hour)
                if span is not None and span[0] <= hour and (span[1] is None or hour < span[1]):
                    if (parts := summed.get(key)) is None:
                        parts = summed[key] = []
                else:
                    others.add(key)
                    parts = None
            if parts is not None:
                parts.append(b)
        for d, c, start, _ in removed:
            hour = _hour(start)
            span = whole.get((d, c))
            if span is None or hour < span[0] or (span[1] is not None and hour >= span[1]):
                others.add((d, c, hour))
        if whole:
            cur.execute(
                f"DELETE FROM {HOURS.name} h USING unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[], "
                f"{_ARRAY}::timestamptz[]) AS n(d, c, l, u) WHERE h.device_id = n.d AND h.channel = n.c "
                "AND h.start >= n.l AND (n.u IS NULL OR h.start < n.u)",
                (_joined(d for d, _ in whole), [c for _, c in whole], _joined(low for low, _ in whole.values()),
                 _joined(high for _, high in whole.values())),
            )  # fmt: skip
        self._hours(cur, others - summed.keys())
        HOURS.copy_in(cur, (_hour_row(key, parts) for key, parts in summed.items()))

    def _hours(self, cur: psycopg.Cursor[Any], hours: set[tuple[UUID, str, datetime]]) -> None:
        """Roll the given (device, channel, hour) rows up again from their 5-minute buckets."""
        if not hours:
            return
        ordered = sorted(hours, key=lambda k: (k[0].bytes, k[1], k[2]))
        keys = (_joined(k[0] for k in ordered), [k[1] for k in ordered], _joined(k[2] for k in ordered))
        cur.execute(
            f"DELETE FROM {HOURS.name} h USING unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[]) "
            "AS k(d, c, h) "
            "WHERE h.device_id = k.d AND h.channel = k.c AND h.start = k.h",
            keys,
        )
        cur.execute(
            f"INSERT INTO {HOURS.name} ({', '.join(HOURS.columns)}) "
            "SELECT k.d, k.c, k.h, sum(b.wh), sum(b.on_s), min(b.power_min), max(b.power_max), sum(b.power_sum), "
            "sum(b.count), bool_or(b.gap), sum(b.cost) "
            f"FROM unnest({_ARRAY}::uuid[], %s::text[], {_ARRAY}::timestamptz[]) AS k(d, c, h) "
            f"CROSS JOIN LATERAL (SELECT * FROM {BUCKETS.name} WHERE device_id = k.d AND channel = k.c "
            "AND start >= k.h AND start < k.h + interval '1 hour' ORDER BY start) AS b GROUP BY k.d, k.c, k.h",
            keys,
        )


_ARRAY = "string_to_array(%s, ',', '')"
"""One text parameter read as an array (cast it to the array's type): psycopg dumps a list parameter item by
item in Python, which for the thousands of timestamps and amounts of an import cost more than the query."""


def _joined(values: Iterable[object]) -> str:
    """Values as the one text `_ARRAY` reads: ISO timestamps, numbers, an empty item for None."""
    return ",".join("" if v is None else _iso(v) if isinstance(v, datetime) else str(v) for v in values)


@lru_cache(maxsize=65_536)
def _iso(moment: datetime) -> str:
    """A bucket start's ISO text: the same few thousand starts are sent again at every batch."""
    return moment.isoformat()


def _tail(start: Kept | None, folded: list[Row]) -> list[Kept]:
    """The stored rows `_window` gives for a channel whose stored readings end with `start` and the rows
    `folded` (in order, either may be missing): from the last one at or before the start of the newest one's
    bucket on (all of them if none is)."""
    cut = bucket_start(folded[-1][2] if folded else start[0])  # type: ignore[index]  # one of them is given
    for i in range(len(folded) - 1, -1, -1):
        if folded[i][2] <= cut:
            return [r[2:] for r in folded[i:]]
    return ([start] if start is not None else []) + [r[2:] for r in folded]


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _hour(start: datetime) -> datetime:
    """The start of the UTC hour containing `start`, in UTC whatever the session's time zone."""
    return EPOCH + ((start - EPOCH) // HOUR) * HOUR


def _total(stored: Decimal | None, parts: list[Decimal]) -> Decimal:
    """The exact sum of a stored `sum(kwh)` (None: no row) and `parts`, as PostgreSQL would give it had the
    parts been stored first: the finest scale of its terms, never a positive exponent, no negative zero."""
    if not parts:
        return Decimal(0) if stored is None else stored
    with localcontext(STORED):
        total = sum(parts[1:], parts[0]) if stored is None else sum(parts, stored)
        if total.is_finite():
            if total.as_tuple().exponent > 0:  # type: ignore[operator]
                total = total.quantize(Decimal(1))
            if not total:
                total = abs(total)
    return total


def _hour_row(key: tuple[UUID, str, datetime], buckets: list[BucketRow]) -> tuple[Any, ...]:
    """One hourly rollup row (in the table's column order) from every bucket of its hour, in start order,
    giving what the SQL rollup gives: each float summed from the first bucket's on in the same order, the
    latest of equal minima or maxima (as PostgreSQL's `min` and `max` keep them), costs summed exactly."""
    first = buckets[0]
    wh, on_s, power_min, power_max = first.wh, first.on_s, first.power_min, first.power_max
    power_sum, count, gap, cost = first.power_sum, first.count, first.gap, first.cost
    with localcontext(STORED):
        for b in buckets[1:]:
            wh += b.wh
            on_s += b.on_s
            if b.power_min is not None and (power_min is None or b.power_min <= power_min):
                power_min = b.power_min
            if b.power_max is not None and (power_max is None or b.power_max >= power_max):
                power_max = b.power_max
            power_sum += b.power_sum
            count += b.count
            gap = gap or b.gap
            cost += b.cost
    return key[0], key[1], key[2], wh, on_s, power_min, power_max, power_sum, count, gap, cost


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
