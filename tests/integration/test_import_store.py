"""Saves go in by COPY under the library's lock: the rows and notification ids the library's own insert gives;
an import is stored whole or not at all, and a timestamp once, however the readings arrive."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from adapters.eventstore import StoreUnitOfWork, WattLedger
from domain.device import Device
from domain.energy_handlers import EnergyHandlers, ImportReadings
from domain.imports import ImportedReading
from domain.meter import MeterDay, meter_day_id
from domain.readings import DeviceSnapshot
from tests.kit import ManualClock

TOPIC = "domain.meter:MeterDay.ReadingRecorded"
DAY = datetime(2026, 3, 1, tzinfo=timezone.utc)
NOW = DAY + timedelta(days=30)


def rows(originator: UUID, versions: range) -> list[StoredEvent]:
    return [
        StoredEvent(originator_id=originator, originator_version=v, topic=TOPIC, state=f"state {v}".encode())
        for v in versions
    ]


def table(database_url: str) -> list[tuple[int, UUID, int, str, bytes]]:
    with psycopg.connect(database_url) as conn:
        return [
            (r[0], r[1], r[2], r[3], bytes(r[4]))
            for r in conn.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM wl_events.wattledger_events ORDER BY notification_id"
            )
        ]


def test_copied_rows_get_their_notification_ids_in_order_as_the_librarys_insert_gives_them(
    app: WattLedger, database_url: str
) -> None:
    first, second, third = uuid4(), uuid4(), uuid4()
    copied = app.recorder.insert_events(rows(first, range(1, 1201)))
    inserted = PostgresApplicationRecorder.insert_events(app.recorder, rows(second, range(1, 4)))
    copied_again = app.recorder.insert_events(rows(third, range(1, 6)) + rows(first, range(1201, 1203)))

    assert copied is not None and inserted is not None and copied_again is not None
    ids = list(copied) + list(inserted) + list(copied_again)
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 1200 + 3 + 7
    stored = table(database_url)
    assert [r[0] for r in stored] == ids
    expected = rows(first, range(1, 1201)) + rows(second, range(1, 4)) + rows(third, range(1, 6)) \
        + rows(first, range(1201, 1203))  # fmt: skip
    assert [(r[1], r[2], r[3], r[4]) for r in stored] == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in expected
    ]
    readable = app.recorder.select_notifications(start=None, limit=2000)
    assert [(n.id, n.originator_id, n.originator_version) for n in readable] == [(r[0], r[1], r[2]) for r in stored]


def test_a_copy_that_clashes_part_way_stores_none_of_its_rows_and_the_next_save_gets_its_own_ids(
    app: WattLedger, database_url: str
) -> None:
    stream = uuid4()
    app.recorder.insert_events(rows(stream, range(1, 11)))
    before = table(database_url)

    with pytest.raises(IntegrityError):
        app.recorder.insert_events(rows(uuid4(), range(1, 3000)) + rows(stream, range(10, 12)))

    assert table(database_url) == before
    later = app.recorder.insert_events(rows(stream, range(11, 14)))
    assert later is not None
    after = table(database_url)
    assert after[: len(before)] == before
    assert [(r[0], r[2]) for r in after[len(before):]] == list(zip(later, range(11, 14), strict=True))


def plug() -> Device:
    snapshot = DeviceSnapshot(alias="Plug", model="HS110", device_type="plug", mac="AA:01", firmware="1",
                              is_on=True, has_emeter=True, power_w=0.0, total_wh=0.0)  # fmt: skip
    return Device.from_snapshot("10.9.0.2", snapshot, alias=None, actor="test")


def minutes(start: datetime, count: int, *, power: float = 60.0, every: int = 1) -> list[ImportedReading]:
    return [
        ImportedReading(timestamp=(start + timedelta(minutes=every * n)).isoformat(), power_w=power,
                        total_wh=float(n))
        for n in range(count)
    ]  # fmt: skip


async def test_an_import_that_fails_part_way_stores_nothing_of_the_request(app: WattLedger, database_url: str) -> None:
    device = plug()
    app.save(device)
    handlers = EnergyHandlers(StoreUnitOfWork(app), ManualClock(NOW))
    refused = meter_day_id(device.id, (DAY + timedelta(days=5)).date())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.originator_id = '{refused}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON wl_events.wattledger_events FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    before = table(database_url)

    with pytest.raises(PersistenceError):
        await handlers.import_readings(ImportReadings(device_id=device.id, readings=tuple(minutes(DAY, 10_000)),
                                                      actor="test"))  # fmt: skip

    assert table(database_url) == before
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON wl_events.wattledger_events")
    done = await handlers.import_readings(ImportReadings(device_id=device.id, readings=tuple(minutes(DAY, 10_000)),
                                                         actor="test"))  # fmt: skip
    assert (done.recorded, done.duplicates) == (10_000, 0)
    assert len(table(database_url)) == len(before) + 10_000 + 7, "ten thousand readings and seven opened days"


async def test_duplicates_within_and_across_requests_are_recorded_once_and_the_first_given_wins(
    app: WattLedger,
) -> None:
    device = plug()
    app.save(device)
    handlers = EnergyHandlers(StoreUnitOfWork(app), ManualClock(NOW))
    first = minutes(DAY, 3000, power=10.0, every=2)
    within = first + minutes(DAY, 500, power=99.0, every=2)

    answer = await handlers.import_readings(ImportReadings(device_id=device.id, readings=tuple(within), actor="t"))

    assert (answer.received, answer.recorded, answer.duplicates) == (3500, 3000, 500)
    across = minutes(DAY + timedelta(minutes=1), 4000, power=77.0)
    answer = await handlers.import_readings(ImportReadings(device_id=device.id, readings=tuple(across), actor="t"))
    assert (answer.recorded, answer.duplicates) == (4000 - 2000, 2000)
    again = await handlers.import_readings(ImportReadings(device_id=device.id, readings=tuple(within + across),
                                                          actor="t"))  # fmt: skip
    assert (again.recorded, again.duplicates) == (0, 7500)

    recorded: dict[datetime, float | None] = {}
    for day in range(6):
        stream = meter_day_id(device.id, (DAY + timedelta(days=day)).date())
        for event in app.events.get(stream):
            if isinstance(event, MeterDay.ReadingRecorded):
                assert event.measured_at not in recorded
                recorded[event.measured_at] = event.power_w
    assert len(recorded) == 3000 + 2000
    assert all(recorded[DAY + timedelta(minutes=2 * n)] == 10.0 for n in range(3000))
    assert sorted(at for at, power in recorded.items() if power == 77.0) == [
        DAY + timedelta(minutes=2 * n + 1) for n in range(2000)
    ]
