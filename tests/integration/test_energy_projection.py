"""The energy read model against a real PostgreSQL: the same readings in any order and batching give the same rows."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from typing import Any

from decimal import Decimal

import psycopg
import pytest

from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env
from domain.device import Device
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers, ImportReadings, SetRate
from domain.imports import ImportedReading
from domain.readings import DeviceSnapshot
from domain.pricing import kwh_of, price_rows
from projections.energy import BUCKETS, FLEET, HOURS, RATES, READINGS, EnergyProjector, rate_of
from projections.engine import ProjectionEngine

T0 = datetime(2026, 3, 7, 22, 0, tzinfo=timezone.utc)
TIERS = {
    "rate_type": "tiered", "effective_from": "2026-01-01T00:00:00Z", "billing_cycle_day": 8,
    "rate_structure": {"tier1_limit": 0.5, "tier1_rate": 0.1, "tier2_limit": 1.0, "tier2_rate": 0.2, "tier3_rate": 0.3},
}  # fmt: skip


def device(address: str) -> Device:
    snapshot = DeviceSnapshot(
        alias=address, model="HS110", device_type="plug", mac="AA:BB", firmware="1", is_on=True,
        has_emeter=True, power_w=0.0, total_wh=0.0,
    )  # fmt: skip
    return Device.from_snapshot(address, snapshot, alias=None, actor="test")


def readings() -> list[ImportedReading]:
    """Six hours of one-minute readings: load changes, a counter reset, jitter, a 40-minute gap with a rise."""
    rng = random.Random(8)
    out = []
    total = 5000.0
    for n in range(360):
        at = T0 + timedelta(minutes=n)
        power = rng.choice([0.0, 3.0, 60.0, 1200.0])
        if 200 < n < 240:
            total += power / 60
            continue
        if n == 100:
            total = 2.0
        jitter = -0.4 if n % 37 == 0 else 0.0
        out.append(ImportedReading(timestamp=at.isoformat(), power_w=power, total_wh=round(total + jitter, 3)))
        total += power / 60
    return out


def rows(conn: psycopg.Connection[Any], table: str, device_id: object) -> list[tuple[Any, ...]]:
    """A device's rows without its id, in key order."""
    order = "channel, at" if table == READINGS.name else "channel, start"
    cursor = conn.execute(f"SELECT * FROM {table} WHERE device_id = %s ORDER BY {order}", (device_id,))
    return [tuple(r[1:]) for r in cursor.fetchall()]


def test_shuffled_late_batches_give_the_rows_of_one_ordered_import_and_of_a_rebuild(database_url: str) -> None:
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [EnergyProjector(EnergyRules.for_polling_interval(60))])
    loop = asyncio.new_event_loop()
    try:
        engine.setup()
        ordered, shuffled = device("10.7.0.1"), device("10.7.0.2")
        app.save(ordered, shuffled)
        handlers = EnergyHandlers(StoreUnitOfWork(app), SystemClock())
        loop.run_until_complete(handlers.set_rate(SetRate(body=TIERS, actor="test")))
        items = readings()
        loop.run_until_complete(handlers.import_readings(
            ImportReadings(device_id=ordered.id, readings=tuple(items), actor="test")))  # fmt: skip
        engine.catch_up("energy")
        mixed = list(items)
        random.Random(3).shuffle(mixed)
        for first in range(0, len(mixed), 45):
            loop.run_until_complete(handlers.import_readings(
                ImportReadings(device_id=shuffled.id, readings=tuple(mixed[first : first + 45]), actor="test")))  # fmt: skip
            engine.catch_up("energy")
        with psycopg.connect(database_url) as conn:
            before = {t.name: (rows(conn, t.name, ordered.id), rows(conn, t.name, shuffled.id))
                      for t in (READINGS, BUCKETS, HOURS)}  # fmt: skip
        for name, (one, other) in before.items():
            assert one == other, name
        assert any(r[-1] > 0 for r in before[BUCKETS.name][0]), "buckets are priced"
        engine.rebuild("energy")
        with psycopg.connect(database_url) as conn:
            for table in (READINGS, BUCKETS, HOURS):
                assert rows(conn, table.name, ordered.id) == before[table.name][0], table.name
                assert rows(conn, table.name, shuffled.id) == before[table.name][1], table.name
    finally:
        loop.close()
        engine.close()
        app.close()


def from_zero_costs(conn: psycopg.Connection[Any]) -> dict[tuple[Any, ...], Decimal]:
    """Every bucket priced by one walk over the whole fleet from the first bucket: the reference."""
    records = conn.execute(f"SELECT device_id, channel, start, wh FROM {BUCKETS.name}").fetchall()
    records.sort(key=lambda r: (r[2], str(r[0]), r[1]))
    versions = [rate_of(RATES.decode(r)) for r in conn.execute(RATES.select).fetchall()]

    def used_before(cycle: datetime, first: datetime) -> Decimal:
        return sum((kwh_of(wh) for _, _, s, wh in records if cycle <= s < first), Decimal(0))

    return price_rows([((d, c, s), s, wh) for d, c, s, wh in records], versions, used_before)


@pytest.mark.parametrize("seed", [5, 11])
def test_repricing_only_what_late_batches_touch_equals_pricing_the_fleet_from_zero(database_url: str, seed: int) -> None:
    """Three plugs import shuffled late batches under tiers low enough to be crossed many times, with a rate
    version set in between that reaches back: each stored cost equals one walk over the whole fleet, and the
    fleet's running totals equal the buckets' sums."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [EnergyProjector(EnergyRules.for_polling_interval(60))])
    try:
        engine.setup()
        import_late_shuffled_batches(app, engine, "10.7.1", random.Random(seed))
        with psycopg.connect(database_url) as conn:
            expected = from_zero_costs(conn)
            stored = {(d, c, s): cost for d, c, s, cost in
                      conn.execute(f"SELECT device_id, channel, start, cost FROM {BUCKETS.name}").fetchall()}  # fmt: skip
            fleet = conn.execute(
                f"SELECT f.start, f.kwh, f.buckets, count(b.*) FROM {FLEET.name} f "
                f"LEFT JOIN {BUCKETS.name} b ON b.start = f.start GROUP BY f.start, f.kwh, f.buckets"
            ).fetchall()
            sums = {s: sum((kwh_of(wh) for _, _, s2, wh in conn.execute(
                f"SELECT device_id, channel, start, wh FROM {BUCKETS.name} WHERE start = %s", (s,)).fetchall()
                if s2 == s), Decimal(0)) for s, *_ in fleet[:50]}  # fmt: skip
        assert stored == expected
        assert sum(1 for cost in stored.values() if cost > 0) > len(stored) // 2, "the buckets are priced"
        assert all(count == buckets for _, _, buckets, count in fleet)
        assert all(kwh == sums[s] for s, kwh, _, _ in fleet[:50])
    finally:
        engine.close()
        app.close()


LOW_TIERS = {**TIERS, "rate_structure": {"tier1_limit": 0.3, "tier1_rate": 0.1, "tier2_limit": 0.9,
                                         "tier2_rate": 0.2, "tier3_rate": 0.3}}  # fmt: skip
"""Tiers low enough for six hours of three plugs to cross them many times."""


def import_late_shuffled_batches(app: WattLedger, engine: ProjectionEngine, subnet: str, rng: random.Random) -> None:
    """Three plugs (at `subnet`.0-2) import `readings()` in batches of random sizes, shuffled across plugs,
    under LOW_TIERS, with a rate version reaching back two hours set halfway; each batch is projected."""
    loop = asyncio.new_event_loop()
    try:
        plugs = [device(f"{subnet}.{n}") for n in range(3)]
        app.save(*plugs)
        handlers = EnergyHandlers(StoreUnitOfWork(app), SystemClock())
        loop.run_until_complete(handlers.set_rate(SetRate(body=LOW_TIERS, actor="test")))
        batches = [(plug.id, part) for plug in plugs for part in batched(readings(), rng.randint(20, 90))]
        rng.shuffle(batches)
        for n, (plug_id, part) in enumerate(batches):
            if n == len(batches) // 2:
                later = {**LOW_TIERS, "effective_from": (T0 + timedelta(hours=2)).isoformat(), "billing_cycle_day": 1}
                loop.run_until_complete(handlers.set_rate(SetRate(body=later, actor="test")))
            loop.run_until_complete(handlers.import_readings(
                ImportReadings(device_id=plug_id, readings=tuple(part), actor="test")))  # fmt: skip
            engine.catch_up("energy")
    finally:
        loop.close()


def batched(items: list[ImportedReading], size: int) -> list[list[ImportedReading]]:
    return [items[first : first + size] for first in range(0, len(items), size)]
