"""The projection engine against a real PostgreSQL: versions, isolation, one read of the log."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from adapters.eventstore import EVENTS_SCHEMA, WattLedger
from projections.devices import DevicesProjector
from projections.tables import READ_SCHEMA
from projections.tracking import projector_status
from tests.harness import (
    BERLIN_EVE,
    CountingProjector,
    engine_for,
    lamp,
    projected_to,
    seed_history,
    table_rows,
    tracking,
)
from tests.kit import ManualClock, seed_device

BERLIN = ZoneInfo("Europe/Berlin")


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
    clock = ManualClock(BERLIN_EVE)
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
        seed_device(app, "127.0.0.1:10300", lamp(1.0), measured_at=BERLIN_EVE)
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
        seed_device(app, "127.0.0.1:10350", lamp(1.0), measured_at=BERLIN_EVE)
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
        seed_device(app, "127.0.0.1:10400", lamp(1.0), measured_at=BERLIN_EVE)
        table = f"{EVENTS_SCHEMA}.{app.recorder.events_table_name}"  # type: ignore[attr-defined]
        with psycopg.connect(database_url) as conn:
            for _ in range(5):
                conn.execute(f"SELECT nextval(pg_get_serial_sequence('{table}', 'notification_id'))")
        seed_device(app, "127.0.0.1:10401", lamp(1.0), measured_at=BERLIN_EVE)
        with psycopg.connect(database_url) as conn:
            ids = [r[0] for r in conn.execute(f"SELECT notification_id FROM {table} ORDER BY 1")]
        assert ids[-1] - ids[0] + 1 > len(ids)
        assert engine.catch_up("count") == len(ids)
        assert engine.position("count") == ids[-1]
    finally:
        engine.close()


async def test_run_projects_what_is_stored_after_a_wake(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    await asyncio.to_thread(seed_device, app, "127.0.0.1:10500", lamp(1.0), measured_at=BERLIN_EVE)
    task = asyncio.create_task(engine.run(poll_interval=600))
    try:
        assert await projected_to(engine, "devices", app.recorder.max_notification_id(), within=10) > 0
        await asyncio.to_thread(seed_device, app, "127.0.0.1:10501", lamp(1.0), measured_at=BERLIN_EVE)
        engine.wake()
        head = app.recorder.max_notification_id()
        assert await projected_to(engine, "devices", head, within=10) == head
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.close()


async def test_run_polls_when_nobody_wakes_it(app: WattLedger, database_url: str) -> None:
    engine = engine_for(app, database_url, DevicesProjector())
    task = asyncio.create_task(engine.run(poll_interval=0.1))
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(seed_device, app, "127.0.0.1:10502", lamp(1.0), measured_at=BERLIN_EVE)
        head = app.recorder.max_notification_id()
        assert await projected_to(engine, "devices", head, within=10) == head
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.close()


async def test_a_cancelled_engine_returns_only_once_its_pass_in_flight_has_ended(
    app: WattLedger, database_url: str
) -> None:
    """A pass runs in a thread, which a cancel cannot stop: `run` waits for it, so nothing projects
    behind a caller that stopped the engine (and then, say, reads or changes a tracking row)."""
    slow = CountingProjector("slow")
    entered, release = threading.Event(), threading.Event()
    ended: list[bool] = []

    def hold() -> None:
        entered.set()
        release.wait(30)
        ended.append(True)

    slow.before_apply = hold
    engine = engine_for(app, database_url, slow, batch_size=4)
    try:
        seed_history(app)
        running = asyncio.create_task(engine.run(poll_interval=0.05))
        assert await asyncio.to_thread(entered.wait, 30)
        running.cancel()
        await asyncio.sleep(0.2)
        assert not running.done(), "the cancel returned while the pass was still applying"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
        stopped_after = len(slow.calls)
        assert len(ended) == stopped_after, "every batch the pass began had ended"
        await asyncio.sleep(0.3)
        assert len(slow.calls) == stopped_after, "nothing was applied once the engine stopped"
        assert tracking(database_url)["slow"]["position"] > 0
    finally:
        release.set()
        engine.close()
