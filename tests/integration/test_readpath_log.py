"""The event log's sections are the notifications the library's recorder selects, field for field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import Notification, OperationalError

from adapters.eventlog import EventLog
from adapters.eventstore import PollResult, WattLedger
from domain.readings import DeviceSnapshot
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def plug(total_wh: float) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True, has_emeter=True,
        power_w=50.0, voltage_v=230.0, current_a=0.2, total_wh=total_wh, rssi=-50,
    )


def seeded(app: WattLedger) -> int:
    devices = [seed_device(app, f"127.0.0.1:{11400 + i}", plug(1.0), measured_at=T0) for i in range(2)]
    for minute in range(1, 6):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute), snapshot=plug(minute))
                         for d in devices])  # fmt: skip
    return app.recorder.max_notification_id() or 0


def fields(notifications: Any) -> list[list[tuple[str, type, Any]]]:
    return [[(k, type(v), v) for k, v in vars(n).items()] for n in notifications]


def test_every_cut_of_the_log_reads_as_the_recorder_selects_it(app: WattLedger) -> None:
    head = seeded(app)
    log = EventLog(app)
    topics = sorted({n.topic for n in app.recorder.select_notifications(start=1, limit=head)})
    assert len(topics) > 2
    for after, limit, stop, chosen in [
        (0, head, None, None), (0, 3, None, None), (2, 5, None, None), (3, head, head - 4, None),
        (0, head, None, topics[:1]), (1, 4, head - 1, topics[1:]), (head, 10, None, None), (0, head, 0, None),
    ]:  # fmt: skip
        read = log.read_raw(after, limit, stop, chosen)
        selected = app.recorder.select_notifications(
            start=after, limit=limit, stop=stop, topics=chosen or (), inclusive_of_start=False
        )
        assert fields(read) == fields(selected)
        assert read == selected and all(type(n) is Notification for n in read)
        assert {hash(n) for n in read} == {hash(n) for n in selected}
    assert [n.id for n in log.read_raw(0, head)] == list(range(1, head + 1))
    assert log.read_raw(0, head, topics=[]) == []


def test_a_read_that_meets_a_lost_connection_is_tried_again(app: WattLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    head = seeded(app)
    log = EventLog(app)
    datastore = app.recorder.datastore  # type: ignore[attr-defined]
    real = datastore.get_connection
    failures = [OperationalError("server closed the connection unexpectedly")]

    @contextmanager
    def flaky() -> Iterator[psycopg.Connection[Any]]:
        if failures:
            raise failures.pop()
        with real() as conn:
            yield conn

    monkeypatch.setattr(datastore, "get_connection", flaky)
    assert [n.id for n in log.read_raw(0, head)] == list(range(1, head + 1))
    assert failures == []
