"""An event a read model cannot apply is quarantined, never a wall: against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
import psycopg.errors
import pytest
from eventsourcing.persistence import Notification
from structlog.testing import capture_logs

from adapters.eventstore import WattLedger
from projections.tables import READ_SCHEMA, Table
from projections.tracking import QUARANTINE, projector_status
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
from tests.kit import seed_device


class Note(msgspec.Struct, kw_only=True):
    position: int
    kind: str


class NotingProjector:
    """Writes one text row per event; the events in `poisoned` carry a NUL, which PostgreSQL refuses.

    `faults` lists positions whose next application raises a serialization failure, once each."""

    version = 1

    def __init__(self, name: str, app: WattLedger) -> None:
        self.name = name
        self.app = app
        self.table = Table(f"{READ_SCHEMA}.test_notes_{name}", Note, key="position")
        self.tables = (self.table,)
        self.poisoned: set[int] = set()
        self.faults: set[int] = set()

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        rows = []
        for event in events:
            position = self._position(cur, event)
            if position in self.faults:
                self.faults.discard(position)
                raise psycopg.errors.SerializationFailure("could not serialize access")
            kind = type(event).__qualname__ + ("\x00" if position in self.poisoned else "")
            rows.append(self.table.values(Note(position=position, kind=kind)))
        cur.executemany(self.table.upsert, rows)

    @staticmethod
    def _position(cur: psycopg.Cursor[Any], event: Any) -> int:
        row = cur.execute(
            "SELECT notification_id FROM wl_events.wattledger_events WHERE originator_id = %s AND "
            "originator_version = %s", (event.originator_id, event.originator_version),
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])


def quarantine(database_url: str) -> list[dict[str, Any]]:
    return table_rows(database_url, QUARANTINE, "projector, position")


def notes(database_url: str, name: str) -> list[int]:
    return [r["position"] for r in table_rows(database_url, f"{READ_SCHEMA}.test_notes_{name}", "position")]


async def status_of(database_url: str, head: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return {s.name: s for s in await projector_status(conn, head)}


async def test_an_event_a_read_model_cannot_hold_is_quarantined_and_the_others_applied(
    app: WattLedger, database_url: str
) -> None:
    noting, healthy = NotingProjector("noting", app), CountingProjector("healthy")
    engine = engine_for(app, database_url, noting, healthy, batch_size=16)
    try:
        seed_history(app)
        head = app.recorder.max_notification_id() or 0
        noting.poisoned = {7, 8, head}
        applied = engine.catch_up_all()
        assert applied == {"noting": head, "healthy": head}
        assert notes(database_url, "noting") == [p for p in range(1, head + 1) if p not in noting.poisoned]
        held = quarantine(database_url)
        assert [(q["projector"], q["position"]) for q in held] == [("noting", 7), ("noting", 8), ("noting", head)]
        assert all("DataError" in q["error"] and "\x00" not in q["error"] for q in held)
        assert held[0]["topic"].startswith("domain.") and held[0]["originator_version"] >= 1
        state = tracking(database_url)["noting"]
        assert (state["position"], state["last_error"], state["attempts"]) == (head, None, 0)

        status = await status_of(database_url, head)
        assert (status["noting"].lag, status["noting"].state, status["noting"].quarantined) == (0, "degraded", 3)
        assert [q.position for q in status["noting"].quarantine] == [7, 8, head]
        assert (status["healthy"].state, status["healthy"].quarantined) == ("current", 0)
    finally:
        engine.close()


async def test_a_transient_fault_quarantines_nothing_and_is_retried(app: WattLedger, database_url: str) -> None:
    noting = NotingProjector("noting", app)
    engine = engine_for(app, database_url, noting, batch_size=16, retry_base=0.0)
    try:
        seed_history(app)
        head = app.recorder.max_notification_id() or 0
        noting.faults = {5}
        assert engine.catch_up_all() == {"noting": head}, "retried at once (no backoff here) and applied"
        assert noting.faults == set(), "the fault was met"
        assert quarantine(database_url) == []
        assert notes(database_url, "noting") == list(range(1, head + 1))
        assert tracking(database_url)["noting"]["last_error"] is None
    finally:
        engine.close()


def test_an_event_that_cannot_be_decoded_is_quarantined_for_every_read_model(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    noting, counting = NotingProjector("noting", app), CountingProjector("counting")
    engine = engine_for(app, database_url, noting, counting, batch_size=16)
    try:
        seed_history(app)
        head = app.recorder.max_notification_id() or 0
        decode = app.mapper.to_domain_event

        def broken(notification: Notification) -> Any:
            if notification.id == 3:
                raise ValueError("unknown field in stored state")
            return decode(notification)

        monkeypatch.setattr(app.mapper, "to_domain_event", broken)
        assert engine.catch_up_all() == {"noting": head, "counting": head}
        assert [(q["projector"], q["position"]) for q in quarantine(database_url)] == [("counting", 3), ("noting", 3)]
        assert 3 not in notes(database_url, "noting") and len(notes(database_url, "noting")) == head - 1
    finally:
        engine.close()


async def test_retry_applies_what_now_applies_in_log_order_and_keeps_what_still_fails(
    app: WattLedger, database_url: str
) -> None:
    noting = NotingProjector("noting", app)
    engine = engine_for(app, database_url, noting, batch_size=8)
    try:
        seed_history(app)
        head = app.recorder.max_notification_id() or 0
        noting.poisoned = {4, 9}
        engine.catch_up_all()
        assert engine.verify(["noting"]) == [], "a replay quarantines the same events"

        before, after = engine.retry()
        assert [e.position for e in before] == [4, 9] and [e.position for e in after] == [4, 9]

        noting.poisoned = {9}
        before, after = engine.retry()
        assert [e.position for e in before] == [4, 9] and [e.position for e in after] == [9]
        assert notes(database_url, "noting") == [p for p in range(1, head + 1) if p != 9]
        assert tracking(database_url)["noting"]["position"] == head

        noting.poisoned = set()
        assert [e.position for e in engine.retry()[1]] == []
        assert quarantine(database_url) == [] and engine.quarantined() == []
        assert (await status_of(database_url, head))["noting"].state == "current"
    finally:
        engine.close()


async def test_a_killed_database_connection_is_one_warning_line_without_traceback_and_the_engine_goes_on(
    app: WattLedger, database_url: str
) -> None:
    counting = CountingProjector("counting")
    engine = engine_for(app, database_url, counting)
    with capture_logs() as logs:
        task = asyncio.create_task(engine.run(poll_interval=0.05, fault_backoff_max=0.2))
        try:
            seed_history(app)
            await projected_to(engine, "counting", app.recorder.max_notification_id() or 0)
            with psycopg.connect(database_url, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            assert killed is not None and killed[0] >= 1
            seed_device(app, "127.0.0.1:10300", lamp(1.0), measured_at=BERLIN_EVE)
            engine.wake()
            await projected_to(engine, "counting", app.recorder.max_notification_id() or 0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            engine.close()
    failures = [e for e in logs if e["event"] in ("projector.pass_failed", "projector.failed")]
    assert failures, "the killed connection was met"
    warned = [e for e in failures if e["log_level"] == "warning"]
    assert len(warned) == 1 and "exc_info" not in warned[0] and "\n" not in warned[0]["error"], failures
    assert all(e["log_level"] in ("warning", "debug") and "exc_info" not in e for e in failures), failures
    assert quarantine(database_url) == []
