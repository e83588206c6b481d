"""Retention against a real PostgreSQL: old raw readings go; rollups, costs and the event log stay; readings
that arrive after a sweep fold as a replay of the whole log does; the sweep runs on its own schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from adapters.eventstore import StoreUnitOfWork, WattLedger
from domain.device import Device
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers, ImportReadings, SetRate
from domain.imports import ImportedReading
from domain.readings import DeviceSnapshot, OutletReading
from projections.energy import BUCKETS, HOURS, READINGS, EnergyProjector
from projections.retention import ReadingRetention
from tests.harness import engine_for
from tests.kit import ManualClock, eventually

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
DAYS = 3
RATE = {"rate_type": "simple", "effective_from": "2026-01-01T00:00:00Z", "rate_structure": {"rate_per_kwh": 0.25}}


def strip() -> Device:
    snapshot = DeviceSnapshot(
        alias="Strip", model="HS300", device_type="strip", mac="BB:01", firmware="1", is_on=True, has_emeter=True,
        power_w=0.0, total_wh=0.0,
        outlets=(OutletReading(outlet_id="o0", index=0, alias="a", is_on=True, power_w=0.0, total_wh=0.0),),
    )  # fmt: skip
    return Device.from_snapshot("10.9.0.1", snapshot, alias=None, actor="test")


def plug() -> Device:
    snapshot = DeviceSnapshot(alias="Plug", model="HS110", device_type="plug", mac="AA:01", firmware="1", is_on=True,
                              has_emeter=True, power_w=0.0, total_wh=0.0)  # fmt: skip
    return Device.from_snapshot("10.9.0.2", snapshot, alias=None, actor="test")


def every_ten_minutes(start: datetime, count: int, first_wh: float = 0.0,
                      outlet: str | None = None) -> list[ImportedReading]:
    return [ImportedReading(timestamp=(start + timedelta(minutes=10 * n)).isoformat(), power_w=120.0,
                            total_wh=first_wh + 20.0 * n, outlet=outlet) for n in range(count)]  # fmt: skip


def table(url: str, name: str) -> list[tuple[Any, ...]]:
    order = "device_id, channel, at" if name == READINGS.name else "device_id, channel, start"
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[psycopg.AsyncConnection[Any]]]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as opened:
        yield opened


async def test_a_sweep_removes_old_raw_readings_and_leaves_rollups_costs_and_the_log(
    database_url: str, app: WattLedger, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
) -> None:
    engine = engine_for(app, database_url, EnergyProjector(EnergyRules.for_polling_interval(600)))
    try:
        devices = [plug(), strip()]
        app.save(*devices)
        clock = ManualClock(T0 + timedelta(days=DAYS))
        handlers = EnergyHandlers(StoreUnitOfWork(app), clock)
        await handlers.set_rate(SetRate(body=RATE, actor="test"))
        for device, outlet in zip(devices, (None, "o0")):
            await handlers.import_readings(ImportReadings(
                device_id=device.id, readings=tuple(every_ten_minutes(T0, 6 * 24 * DAYS, outlet=outlet)),
                actor="test"))  # fmt: skip
        await asyncio.to_thread(engine.catch_up_all)
        buckets, hours, raw = table(database_url, BUCKETS.name), table(database_url, HOURS.name), \
            table(database_url, READINGS.name)  # fmt: skip
        assert any(row[-1] > 0 for row in buckets), "the buckets are priced"
        stored = app.recorder.max_notification_id()

        retention = ReadingRetention(pool, lambda: _days(2), clock, batch=40)
        swept = await retention.sweep()
        cutoff = T0 + timedelta(days=1)
        assert swept.cutoff == cutoff and not swept.skipped
        kept = table(database_url, READINGS.name)
        channels = {(row[0], row[1]) for row in raw}
        assert len(channels) == 2
        before_cutoff = [row for row in kept if row[2] < cutoff]
        assert sorted((r[0], r[1]) for r in before_cutoff) == sorted(channels), "one anchor per channel"
        assert all(r[2] == cutoff - timedelta(minutes=10) for r in before_cutoff)
        assert [r for r in kept if r[2] >= cutoff] == [r for r in raw if r[2] >= cutoff]
        assert swept.removed == len(raw) - len(kept) == 2 * (6 * 24 - 1)
        assert table(database_url, BUCKETS.name) == buckets and table(database_url, HOURS.name) == hours
        assert app.recorder.max_notification_id() == stored

        again = await retention.sweep()
        assert again.removed == 0 and table(database_url, READINGS.name) == kept

        # Readings after the sweep, one of them late, fold as a replay of the whole log does.
        later = T0 + timedelta(days=DAYS)
        clock.set(later + timedelta(hours=1))
        late = [ImportedReading(timestamp=(cutoff + timedelta(minutes=5)).isoformat(), power_w=120.0, total_wh=2890.0)]
        await handlers.import_readings(ImportReadings(
            device_id=devices[0].id, readings=(*every_ten_minutes(later, 6, 20.0 * 6 * 24 * DAYS), *late),
            actor="test"))  # fmt: skip
        await asyncio.to_thread(engine.catch_up_all)
        live_buckets, live_hours = table(database_url, BUCKETS.name), table(database_url, HOURS.name)
        await asyncio.to_thread(engine.rebuild, "energy")
        assert table(database_url, BUCKETS.name) == live_buckets and table(database_url, HOURS.name) == live_hours
        assert len(table(database_url, READINGS.name)) == len(raw) + 7, "a replay brings the raw readings back"
    finally:
        engine.close()


async def test_the_sweep_runs_on_its_schedule_and_follows_the_configured_days(
    database_url: str, app: WattLedger, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
) -> None:
    engine = engine_for(app, database_url, EnergyProjector(EnergyRules.for_polling_interval(600)))
    try:
        device = plug()
        app.save(device)
        clock = ManualClock(T0 + timedelta(days=DAYS))
        await EnergyHandlers(StoreUnitOfWork(app), clock).import_readings(
            ImportReadings(device_id=device.id, readings=tuple(every_ten_minutes(T0, 6 * 24 * DAYS)), actor="t"))
        await asyncio.to_thread(engine.catch_up_all)
        total = len(table(database_url, READINGS.name))
        configured = {"days": 365}

        async def days() -> int:
            return configured["days"]

        sweeping = asyncio.create_task(ReadingRetention(pool, days, clock, every=0.05).run())
        try:
            await asyncio.sleep(0.2)
            assert len(table(database_url, READINGS.name)) == total
            configured["days"] = 1
            left = await eventually(lambda: (n := len(table(database_url, READINGS.name))) < total and n,
                                    what="the sweep taking up a retention of 1 day")  # fmt: skip
            assert left == 6 * 24 + 1
        finally:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
    finally:
        engine.close()


async def _days(n: int) -> int:
    return n
