"""The projection engine against a real PostgreSQL: versions, isolation, one read of the log."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.eventstore import EVENTS_SCHEMA, PollResult, WattLedger, ensure_events_schema, store_env
from domain.device import Device
from domain.readings import DeviceSnapshot, OutletReading
from projections.devices import DevicesProjector
from projections.engine import ProjectionEngine
from projections.tables import READ_SCHEMA, Table
from projections.tracking import projector_status
from tests.kit import ManualClock, seed_device, seed_polls

# A quarter of an hour before local midnight in Berlin, on the day its clocks go back.
T0 = datetime(2026, 10, 24, 21, 45, tzinfo=timezone.utc)
BERLIN = ZoneInfo("Europe/Berlin")


def plug(total_wh: float | None, *, mac: str = "AA", power_w: float = 100.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac=mac, firmware="1", is_on=True, has_emeter=True,
        power_w=power_w, voltage_v=230.0, current_a=0.4, total_wh=total_wh, rssi=-40,
    )


def strip(totals: Sequence[float]) -> DeviceSnapshot:
    outlets = tuple(
        OutletReading(outlet_id=f"o{i}", index=i, alias=f"Plug {i}", is_on=True, power_w=10.0, total_wh=t)
        for i, t in enumerate(totals)
    )
    return DeviceSnapshot(
        alias="Strip", model="HS300", device_type="strip", mac="BB", firmware="1", is_on=True, has_emeter=True,
        power_w=10.0 * len(totals), total_wh=sum(totals), outlets=outlets,
    )


class TopicCount(msgspec.Struct, kw_only=True):
    topic: str
    events: int


class CountingProjector:
    """Counts the events it was given, by type: applying one twice or missing one shows."""

    version = 1

    def __init__(self, name: str, *, version: int = 1, calls: list[str] | None = None) -> None:
        self.name = name
        self.version = version
        self.table = Table(f"{READ_SCHEMA}.test_counts_{name}", TopicCount, key="topic")
        self.tables = (self.table,)
        self.broken = False
        self.calls = calls if calls is not None else []
        self.before_apply: Callable[[], None] = lambda: None

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.calls.append(self.name)
        self.before_apply()
        counts = Counter(type(event).__qualname__ for event in events)
        cur.execute(self.table.select)
        for row in map(self.table.decode, cur.fetchall()):
            counts[row.topic] += row.events
        rows = [TopicCount(topic=topic, events=n) for topic, n in counts.items()]
        cur.executemany(self.table.upsert, [self.table.values(row) for row in rows])
        if self.broken:
            raise RuntimeError(f"{self.name} cannot project this")


@pytest.fixture
def app(database_url: str) -> Iterator[WattLedger]:
    ensure_events_schema(database_url)
    application = WattLedger(store_env(database_url))
    yield application
    application.close()


def engine_for(app: WattLedger, database_url: str, *projectors: Any, **options: Any) -> ProjectionEngine:
    engine = ProjectionEngine(app, database_url, list(projectors), **options)
    engine.setup()
    return engine


def seed_history(app: WattLedger) -> list[UUID]:
    """Plugs and a strip across a local midnight, with a reset, jitter, a late reading and a removal."""
    plugs = [seed_device(app, f"127.0.0.1:{10100 + i}", plug(100.0 * i), measured_at=T0) for i in range(3)]
    power_strip = seed_device(app, "127.0.0.1:10200", strip([10.0, 20.0]), measured_at=T0)
    second_outlet = {10: 0.5, 22: 38.0}
    for minute in range(1, 40, 3):
        at = T0 + timedelta(minutes=minute)
        seed_polls(app, [PollResult(device_id=d, measured_at=at, snapshot=plug(100.0 * i + minute * 1.5))
                         for i, d in enumerate(plugs)])
        totals = [10.0 + minute, second_outlet.get(minute, 20.0 + minute)]
        seed_polls(app, [PollResult(device_id=power_strip, measured_at=at, snapshot=strip(totals))])
    seed_polls(app, [PollResult(device_id=plugs[0], measured_at=T0 + timedelta(minutes=2), snapshot=plug(5.0))])
    device = app.repository.get(plugs[2])
    assert isinstance(device, Device)
    device.remove(actor="t")
    app.save(device)
    return [*plugs, power_strip]


def table_rows(database_url: str, table: str, order: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def tracking(database_url: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in table_rows(database_url, f"{READ_SCHEMA}.projector_tracking", "name")}


def test_replay_from_zero_yields_identical_rows(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector(BERLIN), CountingProjector("count"), batch_size=5)
    try:
        seed_history(app)
        engine.catch_up_all()
        before = table_rows(database_url, f"{READ_SCHEMA}.devices", "address")
        assert {r["today"].isoformat() for r in before} == {"2026-10-25"}
        assert sum(r["today_wh"] for r in before) > 0
        assert engine.rebuild("devices") == app.recorder.max_notification_id()
        assert table_rows(database_url, f"{READ_SCHEMA}.devices", "address") == before
    finally:
        engine.close()


def test_a_read_model_whose_version_changed_is_rebuilt_at_setup(app: WattLedger, database_url: str) -> None:
    first = engine_for(app, database_url, DevicesProjector(BERLIN), CountingProjector("count"))
    seed_history(app)
    first.catch_up_all()
    first.close()
    before = table_rows(database_url, f"{READ_SCHEMA}.devices", "address")
    counts = table_rows(database_url, f"{READ_SCHEMA}.test_counts_count", "topic")
    with psycopg.connect(database_url) as conn:
        conn.execute(f"ALTER TABLE {READ_SCHEMA}.devices ADD COLUMN left_over integer")

    class NextDevices(DevicesProjector):
        version = DevicesProjector.version + 1

    second = engine_for(app, database_url, NextDevices(BERLIN), CountingProjector("count"))
    try:
        state = tracking(database_url)
        assert (state["devices"]["version"], state["devices"]["position"]) == (NextDevices.version, 0)
        assert state["count"]["position"] == app.recorder.max_notification_id()
        assert table_rows(database_url, f"{READ_SCHEMA}.devices", "address") == []
        second.catch_up_all()
        assert table_rows(database_url, f"{READ_SCHEMA}.devices", "address") == before
        assert table_rows(database_url, f"{READ_SCHEMA}.test_counts_count", "topic") == counts
    finally:
        second.close()


def test_a_read_model_whose_table_is_missing_is_rebuilt_at_setup(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    try:
        seed_history(app)
        engine.catch_up_all()
        before = table_rows(database_url, f"{READ_SCHEMA}.devices", "address")
        with psycopg.connect(database_url) as conn:
            conn.execute(f"DROP TABLE {READ_SCHEMA}.devices")
        engine.setup()
        assert engine.position("devices") == 0
        engine.catch_up_all()
        assert table_rows(database_url, f"{READ_SCHEMA}.devices", "address") == before
    finally:
        engine.close()


def test_setup_with_the_same_version_keeps_rows_and_position(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    try:
        seed_history(app)
        engine.catch_up_all()
        before = table_rows(database_url, f"{READ_SCHEMA}.devices", "address")
        engine.setup()
        assert engine.position("devices") == app.recorder.max_notification_id()
        assert table_rows(database_url, f"{READ_SCHEMA}.devices", "address") == before
    finally:
        engine.close()


async def test_a_failing_read_model_leaves_the_others_current(app: WattLedger, database_url: str) -> None:
    clock = ManualClock(T0)
    healthy, failing = CountingProjector("healthy"), CountingProjector("failing")
    failing.broken = True
    engine = engine_for(app, database_url, DevicesProjector(), healthy, failing, batch_size=4, clock=clock.monotonic)
    try:
        seed_history(app)
        head = app.recorder.max_notification_id()
        applied = engine.catch_up_all()
        assert applied["healthy"] == applied["devices"] == head and not applied.get("failing")
        state = tracking(database_url)
        assert (state["failing"]["position"], state["failing"]["attempts"]) == (0, 1)
        assert "failing cannot project this" in state["failing"]["last_error"]
        assert table_rows(database_url, f"{READ_SCHEMA}.test_counts_failing", "topic") == []

        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            status = {s.name: s for s in await projector_status(conn, head)}
        assert (status["failing"].lag, status["failing"].position) == (head, 0)
        assert status["failing"].failing_since is not None and "RuntimeError" in (status["failing"].last_error or "")
        assert (status["healthy"].lag, status["healthy"].last_error, status["healthy"].version) == (0, None, 1)

        engine.catch_up_all()
        assert tracking(database_url)["failing"]["attempts"] == 1, "retried before its backoff ended"
        clock.advance(engine.retry_base)
        engine.catch_up_all()
        assert tracking(database_url)["failing"]["attempts"] == 2
        failing.broken = False
        clock.advance(engine.retry_base)
        assert engine.catch_up_all() == {}, "the backoff doubles"
        clock.advance(engine.retry_base)
        assert engine.catch_up_all()["failing"] == head
        state = tracking(database_url)
        assert (state["failing"]["position"], state["failing"]["last_error"], state["failing"]["attempts"]) == (
            head, None, 0
        )
        assert table_rows(database_url, f"{READ_SCHEMA}.test_counts_failing", "topic") == table_rows(
            database_url, f"{READ_SCHEMA}.test_counts_healthy", "topic"
        )
    finally:
        engine.close()


def test_catch_up_of_one_failing_read_model_raises_its_error(app: WattLedger, database_url: str) -> None:
    failing = CountingProjector("failing")
    failing.broken = True
    engine = engine_for(app, database_url, failing)
    try:
        seed_history(app)
        with pytest.raises(RuntimeError, match="cannot project"):
            engine.catch_up("failing")
        assert tracking(database_url)["failing"]["attempts"] == 1
    finally:
        engine.close()


def test_a_section_is_decoded_once_for_all_read_models(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(
        app, database_url, DevicesProjector(), CountingProjector("a"), CountingProjector("b"), batch_size=6
    )
    try:
        seed_history(app)
        decoded: list[int] = []
        decode = app.mapper.to_domain_event

        def counting(notification: Any) -> Any:
            decoded.append(notification.id)
            return decode(notification)

        monkeypatch.setattr(app.mapper, "to_domain_event", counting)
        applied = engine.catch_up_all()
        head = app.recorder.max_notification_id()
        assert applied == {"devices": head, "a": head, "b": head}
        assert sorted(decoded) == list(range(1, head + 1))
    finally:
        engine.close()


def test_read_models_at_different_positions_each_get_only_newer_events(app: WattLedger, database_url: str) -> None:
    calls: list[str] = []
    ahead, behind = CountingProjector("ahead", calls=calls), CountingProjector("behind", calls=calls)
    engine = engine_for(app, database_url, ahead, batch_size=5)
    seed_history(app)
    engine.catch_up_all()
    engine.close()
    engine = engine_for(app, database_url, ahead, behind, batch_size=5)
    try:
        seed_device(app, "127.0.0.1:10300", plug(1.0), measured_at=T0)
        assert tracking(database_url)["behind"]["position"] == 0
        head = app.recorder.max_notification_id()
        calls.clear()
        applied = engine.catch_up_all()
        assert applied["behind"] == head and 0 < applied["ahead"] < head
        assert calls[:3] == ["behind", "ahead", "behind"], "the read model ahead waited for the replay"
        counts = table_rows(database_url, f"{READ_SCHEMA}.test_counts_ahead", "topic")
        assert counts == table_rows(database_url, f"{READ_SCHEMA}.test_counts_behind", "topic")
        assert sum(r["events"] for r in counts) == head
    finally:
        engine.close()


def test_a_read_model_reset_by_another_process_mid_pass_misses_nothing(app: WattLedger, database_url: str) -> None:
    first, second = CountingProjector("first"), CountingProjector("second")
    engine = engine_for(app, database_url, first, second, batch_size=500)
    try:
        seed_device(app, "127.0.0.1:10350", plug(1.0), measured_at=T0)
        engine.catch_up_all()
        seed_history(app)

        def reset_second_elsewhere() -> None:
            first.before_apply = lambda: None
            with psycopg.connect(database_url) as conn:
                conn.execute(f"UPDATE {READ_SCHEMA}.projector_tracking SET position = 0 WHERE name = 'second'")
                conn.execute(f"DELETE FROM {second.table.name}")

        first.before_apply = reset_second_elsewhere
        engine.catch_up_all()
        head = app.recorder.max_notification_id()
        counts = table_rows(database_url, second.table.name, "topic")
        assert sum(r["events"] for r in counts) == head
        assert counts == table_rows(database_url, first.table.name, "topic")
    finally:
        engine.close()


def test_holes_in_the_notification_ids_are_passed_over(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, CountingProjector("count"), batch_size=3)
    try:
        seed_device(app, "127.0.0.1:10400", plug(1.0), measured_at=T0)
        table = f"{EVENTS_SCHEMA}.{app.recorder.events_table_name}"  # type: ignore[attr-defined]
        with psycopg.connect(database_url) as conn:
            for _ in range(5):
                conn.execute(f"SELECT nextval(pg_get_serial_sequence('{table}', 'notification_id'))")
        seed_device(app, "127.0.0.1:10401", plug(1.0), measured_at=T0)
        with psycopg.connect(database_url) as conn:
            ids = [r[0] for r in conn.execute(f"SELECT notification_id FROM {table} ORDER BY 1")]
        assert ids[-1] - ids[0] + 1 > len(ids)
        assert engine.catch_up("count") == len(ids)
        assert engine.position("count") == ids[-1]
    finally:
        engine.close()


async def wait_for_position(engine: ProjectionEngine, name: str, wanted: int) -> int:
    """The projector's position once it reaches `wanted`, or after about ten seconds."""
    for _ in range(200):
        position = await asyncio.to_thread(engine.position, name)
        if position >= wanted:
            return position
        await asyncio.sleep(0.05)
    return await asyncio.to_thread(engine.position, name)


async def test_run_projects_what_is_stored_after_a_wake(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    await asyncio.to_thread(seed_device, app, "127.0.0.1:10500", plug(1.0), measured_at=T0)
    task = asyncio.create_task(engine.run(poll_interval=600))
    try:
        assert await wait_for_position(engine, "devices", app.recorder.max_notification_id()) > 0
        await asyncio.to_thread(seed_device, app, "127.0.0.1:10501", plug(1.0), measured_at=T0)
        engine.wake()
        head = app.recorder.max_notification_id()
        assert await wait_for_position(engine, "devices", head) == head
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.close()


async def test_run_polls_when_nobody_wakes_it(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    task = asyncio.create_task(engine.run(poll_interval=0.1))
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(seed_device, app, "127.0.0.1:10502", plug(1.0), measured_at=T0)
        head = app.recorder.max_notification_id()
        assert await wait_for_position(engine, "devices", head) == head
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.close()
