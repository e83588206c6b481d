"""Event store + devices projection against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import PollResult, WattLedger
from domain.device import device_id_for
from domain.readings import DeviceSnapshot
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine
from tests.harness import engine_for, lamp, remove_device, strip
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 11, 22, 23, 50, tzinfo=timezone.utc)


@pytest.fixture
def store(app: WattLedger, database_url: str) -> Iterator[tuple[WattLedger, ProjectionEngine]]:
    engine = engine_for(app, database_url, DevicesProjector(), batch_size=7)
    yield app, engine
    engine.close()


def rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM wl_read.devices ORDER BY address").fetchall()


def poll(device_id: UUID, at: datetime, snapshot: DeviceSnapshot) -> PollResult:
    return PollResult(device_id=device_id, measured_at=at, snapshot=snapshot)


def test_added_device_and_its_readings_reach_the_read_model(store: tuple[WattLedger, ProjectionEngine],
                                                           database_url: str) -> None:
    app, engine = store
    device_id = seed_device(app, "127.0.0.1:10001", lamp(1000.0), alias="Desk", actor="user:1", measured_at=T0)
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=5), lamp(1010.0))], actor="system:poller")
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["alias"], row["model"], row["total_wh"], row["power_w"]) == ("Desk", "HS110", 1010.0, 100.0)
    assert row["today_wh"] == pytest.approx(10.0)


def test_energy_across_midnight_is_split_between_the_days(store: tuple[WattLedger, ProjectionEngine],
                                                         database_url: str) -> None:
    app, engine = store
    device_id = seed_device(app, "127.0.0.1:10002", lamp(0.0), measured_at=T0)
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=20), lamp(20.0))])
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert row["today"].isoformat() == "2026-11-23"
    assert row["today_wh"] == pytest.approx(10.0)
    assert row["month"].isoformat() == "2026-11-01"
    assert row["month_wh"] == pytest.approx(20.0)


def test_counter_reset_counts_from_the_new_value(store: tuple[WattLedger, ProjectionEngine],
                                                 database_url: str) -> None:
    app, engine = store
    start = T0 - timedelta(hours=2)
    device_id = seed_device(app, "127.0.0.1:10003", strip([100.0, 200.0]), measured_at=start)
    for minutes, totals in ((1, [105.0, 210.0]), (2, [1.0, 212.0]), (3, [3.0, 213.0])):
        seed_polls(app, [poll(device_id, start + timedelta(minutes=minutes), strip(totals))])
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert row["today_wh"] == pytest.approx(5 + 10 + 1 + 2 + 2 + 1)


def test_a_late_reading_counts_nothing_twice(store: tuple[WattLedger, ProjectionEngine], database_url: str) -> None:
    app, engine = store
    device_id = seed_device(app, "127.0.0.1:10007", lamp(1000.0), measured_at=T0)
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=2), lamp(1004.0))])
    engine.catch_up("devices")
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=1), lamp(1002.0, power_w=5.0))])
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=3), lamp(1006.0))])
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["today_wh"], row["total_wh"], row["power_w"]) == (pytest.approx(6.0), 1006.0, 100.0)


def test_counter_jitter_is_not_counted_twice(store: tuple[WattLedger, ProjectionEngine], database_url: str) -> None:
    app, engine = store
    start = T0 - timedelta(hours=1)
    device_id = seed_device(app, "127.0.0.1:10008", lamp(1000.0), measured_at=start)
    for minute, total in ((1, 1003.0), (2, 1001.0), (3, 1002.0), (4, 1005.0)):
        seed_polls(app, [poll(device_id, start + timedelta(minutes=minute), lamp(total))])
        engine.catch_up("devices")
    [row] = rows(database_url)
    assert row["today_wh"] == pytest.approx(5.0)


def test_a_restored_device_with_a_new_mac_is_a_new_meter(store: tuple[WattLedger, ProjectionEngine],
                                                         database_url: str) -> None:
    app, engine = store
    start = T0 - timedelta(hours=1)
    device_id = seed_device(app, "127.0.0.1:10009", lamp(5000.0), measured_at=start)
    remove_device(app, device_id)
    seed_device(app, "127.0.0.1:10009", lamp(4990.0, mac="CC"), measured_at=start + timedelta(minutes=1))
    seed_polls(app, [poll(device_id, start + timedelta(minutes=2), lamp(4993.0, mac="CC"))])
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["mac"], row["today_wh"]) == ("CC", pytest.approx(3.0))


def test_removed_then_readded_device_keeps_its_id(store: tuple[WattLedger, ProjectionEngine],
                                                  database_url: str) -> None:
    app, engine = store
    device_id = seed_device(app, "127.0.0.1:10006", lamp(1.0), measured_at=T0)
    remove_device(app, device_id)
    engine.catch_up("devices")
    assert [r["removed"] for r in rows(database_url)] == [True]
    seed_device(app, "127.0.0.1:10006", lamp(2.0), alias="Again", measured_at=T0 + timedelta(minutes=1))
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["device_id"], row["alias"], row["removed"]) == (device_id, "Again", False)


def test_rebuild_from_zero_yields_the_same_rows(store: tuple[WattLedger, ProjectionEngine],
                                                database_url: str) -> None:
    app, engine = store
    for port in (10010, 10011, 10012):
        device_id = seed_device(app, f"127.0.0.1:{port}", lamp(10.0), measured_at=T0)
        for minute in range(1, 6):
            snapshot = lamp(10.0 + minute, is_on=minute % 2 == 0)
            seed_polls(app, [poll(device_id, T0 + timedelta(minutes=minute), snapshot)])
    remove_device(app, device_id_for("127.0.0.1:10011"))
    engine.catch_up("devices")
    before = rows(database_url)
    applied = engine.rebuild("devices")
    assert applied == app.recorder.max_notification_id()
    assert rows(database_url) == before
    assert engine.position("devices") == app.recorder.max_notification_id()


def test_offline_device_is_marked_once_and_back_online_on_next_good_poll(
    store: tuple[WattLedger, ProjectionEngine], database_url: str
) -> None:
    app, engine = store
    device_id = seed_device(app, "127.0.0.1:10020", lamp(1.0), measured_at=T0)
    seed_polls(app, [], {device_id: 3})
    seed_polls(app, [], {device_id: 4})
    engine.catch_up("devices")
    assert [r["online"] for r in rows(database_url)] == [False]
    seed_polls(app, [poll(device_id, T0 + timedelta(minutes=1), lamp(2.0))])
    engine.catch_up("devices")
    assert [r["online"] for r in rows(database_url)] == [True]
    topics = [n.topic.rsplit(".", 1)[-1] for n in app.recorder.select_notifications(start=1, limit=100)]
    assert topics.count("WentOffline") == 1 and topics.count("CameOnline") == 1


def test_today_is_the_local_day_of_the_configured_zone(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector(ZoneInfo("America/New_York")))
    try:
        evening = datetime(2026, 11, 23, 3, 0, tzinfo=timezone.utc)
        device_id = seed_device(app, "127.0.0.1:10040", lamp(0.0), measured_at=evening - timedelta(hours=2))
        seed_polls(app, [poll(device_id, evening, lamp(100.0))])
        engine.catch_up("devices")
        [row] = rows(database_url)
        assert row["today"].isoformat() == "2026-11-22" and row["today_wh"] == pytest.approx(100.0)
    finally:
        engine.close()
