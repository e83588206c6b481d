"""A save of any size completes on PostgreSQL: one transaction holding every event; a clash is still a conflict."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid5

import psycopg
import pytest

from adapters.eventstore import UnpipelinedRecorder, WattLedger
from domain.errors import ConcurrencyConflict
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot

DAY = datetime(2026, 6, 1, tzinfo=timezone.utc)
PLUG = DeviceSnapshot(
    alias="Heater", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True, has_emeter=True,
    power_w=1800.0, voltage_v=230.0, current_a=7.8, total_wh=1000.0,
)  # fmt: skip


def full_days(streams: int, readings: int) -> list[MeterDay]:
    days = [MeterDay(device_id=uuid5(UUID(int=0), str(n)), day=DAY.date().isoformat()) for n in range(streams)]
    for meter in days:
        for i in range(readings):
            meter.record(DAY + timedelta(seconds=2 * i), PLUG, actor="import")
    return days


def stored_events(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT originator_id) FROM wl_events.wattledger_events"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_store_records_through_the_recorder_without_a_pipeline(app: WattLedger) -> None:
    assert isinstance(app.recorder, UnpipelinedRecorder)


def test_one_save_of_a_hundred_day_streams_holding_29k_readings_completes(app: WattLedger, database_url: str) -> None:
    days = full_days(streams=100, readings=290)

    position = app.store(*days)

    assert stored_events(database_url) == (100 * 291, 100)
    assert position >= 100 * 291
    reloaded = app.load(days[42].id)
    assert isinstance(reloaded, MeterDay) and reloaded.version == 291


def test_a_large_save_that_clashes_stores_none_of_its_events(app: WattLedger, database_url: str) -> None:
    first = full_days(streams=1, readings=10)
    app.store(*first)
    clashing = full_days(streams=100, readings=290)

    with pytest.raises(ConcurrencyConflict):
        app.store(*clashing)

    assert stored_events(database_url) == (11, 1)


def test_a_save_with_nothing_new_stores_nothing(app: WattLedger, database_url: str) -> None:
    days = full_days(streams=2, readings=3)
    app.store(*days)

    assert app.store(*days) == 0
    assert stored_events(database_url) == (8, 2)
