"""Event store + devices projection against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import PollResult, WattLedger, ensure_events_schema, store_env
from domain.address import parse_address
from domain.device import device_id_for
from domain.errors import DeviceAlreadyExists
from domain.readings import DeviceSnapshot, OutletReading
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine

T0 = datetime(2026, 11, 22, 23, 50, tzinfo=timezone.utc)


def plug(total_wh: float, *, is_on: bool = True, power_w: float = 60.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=is_on, has_emeter=True,
        power_w=power_w, voltage_v=230.0, current_a=0.26, total_wh=total_wh, rssi=-50,
    )


def strip(totals: list[float]) -> DeviceSnapshot:
    outlets = tuple(
        OutletReading(outlet_id=f"o{i}", index=i, alias=f"Plug {i}", is_on=True, power_w=10.0, total_wh=t)
        for i, t in enumerate(totals)
    )
    return DeviceSnapshot(
        alias="Strip", model="HS300", device_type="strip", mac="BB", firmware="1", is_on=True, has_emeter=True,
        power_w=10.0 * len(totals), total_wh=sum(totals), outlets=outlets,
    )


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[WattLedger, ProjectionEngine]]:
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [DevicesProjector()], batch_size=7)
    engine.setup()
    yield app, engine
    engine.close()
    app.close()


def rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM wl_read.devices ORDER BY address").fetchall()


def test_added_device_and_its_readings_reach_the_read_model(store: tuple[WattLedger, ProjectionEngine],
                                                           database_url: str) -> None:
    app, engine = store
    address = parse_address("127.0.0.1:10001")
    app.add_device(address, plug(1000.0), alias="Desk", actor="user:1", measured_at=T0)
    device_id = device_id_for(str(address))
    app.record_polls([PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=5), snapshot=plug(1010.0))],
                     {}, actor="system:poller")
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["alias"], row["model"], row["total_wh"], row["power_w"]) == ("Desk", "HS110", 1010.0, 60.0)
    assert row["today_wh"] == pytest.approx(10.0)


def test_energy_across_midnight_is_split_between_the_days(store: tuple[WattLedger, ProjectionEngine],
                                                         database_url: str) -> None:
    app, engine = store
    address = parse_address("127.0.0.1:10002")
    device_id = device_id_for(str(address))
    app.add_device(address, plug(0.0), alias=None, actor="t", measured_at=T0)
    app.record_polls([PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=20), snapshot=plug(20.0))],
                     {}, actor="p")
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert row["today"].isoformat() == "2026-11-23"
    assert row["today_wh"] == pytest.approx(10.0)
    assert row["month"].isoformat() == "2026-11-01"
    assert row["month_wh"] == pytest.approx(20.0)


def test_counter_reset_counts_from_the_new_value(store: tuple[WattLedger, ProjectionEngine],
                                                 database_url: str) -> None:
    app, engine = store
    address = parse_address("127.0.0.1:10003")
    device_id = device_id_for(str(address))
    start = T0 - timedelta(hours=2)
    app.add_device(address, strip([100.0, 200.0]), alias=None, actor="t", measured_at=start)
    for minutes, totals in ((1, [105.0, 210.0]), (2, [1.0, 212.0]), (3, [3.0, 213.0])):
        app.record_polls(
            [PollResult(device_id=device_id, measured_at=start + timedelta(minutes=minutes), snapshot=strip(totals))],
            {}, actor="p",
        )
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert row["today_wh"] == pytest.approx(5 + 10 + 1 + 2 + 2 + 1)


def test_duplicate_add_is_refused_and_stores_nothing(store: tuple[WattLedger, ProjectionEngine]) -> None:
    app, _ = store
    address = parse_address("127.0.0.1:10004")
    app.add_device(address, plug(1.0), alias=None, actor="t", measured_at=T0)
    before = app.recorder.max_notification_id()
    with pytest.raises(DeviceAlreadyExists):
        app.add_device(address, plug(2.0), alias=None, actor="t", measured_at=T0 + timedelta(seconds=1))
    assert app.recorder.max_notification_id() == before


def test_same_poll_stored_twice_records_one_reading(store: tuple[WattLedger, ProjectionEngine]) -> None:
    app, _ = store
    address = parse_address("127.0.0.1:10005")
    device_id = device_id_for(str(address))
    app.add_device(address, plug(1.0), alias=None, actor="t", measured_at=T0)
    result = PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(2.0))
    assert app.record_polls([result], {}, actor="p") == 1
    assert app.record_polls([result], {}, actor="p") == 0


def test_removed_then_readded_device_keeps_its_id(store: tuple[WattLedger, ProjectionEngine],
                                                  database_url: str) -> None:
    app, engine = store
    address = parse_address("127.0.0.1:10006")
    device_id = device_id_for(str(address))
    app.add_device(address, plug(1.0), alias=None, actor="t", measured_at=T0)
    app.remove_device(device_id, actor="t")
    engine.catch_up("devices")
    assert [r["removed"] for r in rows(database_url)] == [True]
    app.add_device(address, plug(2.0), alias="Again", actor="t", measured_at=T0 + timedelta(minutes=1))
    engine.catch_up("devices")
    [row] = rows(database_url)
    assert (row["device_id"], row["alias"], row["removed"]) == (device_id, "Again", False)


def test_rebuild_from_zero_yields_the_same_rows(store: tuple[WattLedger, ProjectionEngine],
                                                database_url: str) -> None:
    app, engine = store
    for port in (10010, 10011, 10012):
        address = parse_address(f"127.0.0.1:{port}")
        app.add_device(address, plug(10.0), alias=None, actor="t", measured_at=T0)
        device_id = device_id_for(str(address))
        for minute in range(1, 6):
            app.record_polls(
                [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=minute),
                            snapshot=plug(10.0 + minute, is_on=minute % 2 == 0))],
                {}, actor="p",
            )
    app.remove_device(device_id_for("127.0.0.1:10011"), actor="t")
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
    address = parse_address("127.0.0.1:10020")
    device_id = device_id_for(str(address))
    app.add_device(address, plug(1.0), alias=None, actor="t", measured_at=T0)
    app.record_polls([], {device_id: 3}, actor="p")
    app.record_polls([], {device_id: 4}, actor="p")
    engine.catch_up("devices")
    assert [r["online"] for r in rows(database_url)] == [False]
    app.record_polls([PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(2.0))],
                     {}, actor="p")
    engine.catch_up("devices")
    assert [r["online"] for r in rows(database_url)] == [True]
    topics = [n.topic.rsplit(".", 1)[-1] for n in app.recorder.select_notifications(start=1, limit=100)]
    assert topics.count("WentOffline") == 1 and topics.count("CameOnline") == 1


def test_poller_with_a_stale_device_retries_after_another_process_wrote(
    store: tuple[WattLedger, ProjectionEngine], database_url: str
) -> None:
    poller_side, _ = store
    api_side = WattLedger(store_env(database_url))
    try:
        address = parse_address("127.0.0.1:10030")
        device_id = device_id_for(str(address))
        api_side.add_device(address, plug(1.0, is_on=True), alias=None, actor="user:1", measured_at=T0)
        poller_side.record_polls(
            [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(2.0))], {}, actor="p"
        )
        api_side.rename_device(device_id, "Renamed elsewhere", actor="user:1")
        recorded = poller_side.record_polls(
            [PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=2), snapshot=plug(3.0, is_on=False))],
            {}, actor="p",
        )
        assert recorded == 1
        device = api_side.get_device(device_id)
        assert (device.alias, device.relays[None]) == ("Renamed elsewhere", False)
    finally:
        api_side.close()


def test_today_is_the_local_day_of_the_configured_zone(database_url: str) -> None:
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [DevicesProjector(ZoneInfo("America/New_York"))])
    try:
        engine.setup()
        address = parse_address("127.0.0.1:10040")
        device_id = device_id_for(str(address))
        evening = datetime(2026, 11, 23, 3, 0, tzinfo=timezone.utc)
        app.add_device(address, plug(0.0), alias=None, actor="t", measured_at=evening - timedelta(hours=2))
        app.record_polls([PollResult(device_id=device_id, measured_at=evening, snapshot=plug(100.0))], {}, actor="p")
        engine.catch_up("devices")
        [row] = rows(database_url)
        assert row["today"].isoformat() == "2026-11-22" and row["today_wh"] == pytest.approx(100.0)
    finally:
        engine.close()
        app.close()


def test_a_poll_cycle_of_many_devices_is_stored_whole(store: tuple[WattLedger, ProjectionEngine]) -> None:
    app, _ = store
    devices = [parse_address(f"127.0.1.{i // 250}:{10100 + i}") for i in range(450)]
    for address in devices:
        app.add_device(address, plug(0.0), alias=None, actor="t", measured_at=T0)
    results = [PollResult(device_id=device_id_for(str(a)), measured_at=T0 + timedelta(minutes=1), snapshot=plug(1.0))
               for a in devices]
    assert app.record_polls(results, {}, actor="p") == 450
    assert app.record_polls(results, {}, actor="p") == 0
