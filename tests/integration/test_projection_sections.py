"""Read models that take the engine's section as it was read: the same rows as reading the store again."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from eventsourcing.utils import get_topic

import projections.audit_projector as audit_projector
import projections.chain as chain
import projections.quarantine as quarantine
from adapters.eventlog import EventLog
from adapters.eventstore import PollResult, WattLedger
from domain.device import Device
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot, OutletReading
from infra.read_models import all_projectors
from infra.settings import load_settings
from projections.audit_projector import AuditProjector
from projections.chain import ChainProjector
from projections.commands import CommandsProjector
from projections.devices import DEVICES, DeviceRow, DevicesProjector
from projections.energy import READINGS, ReadingRow
from projections.engine import ProjectionEngine, Projector
from projections.exports import ExportsProjector
from projections.identity import IdentityProjector
from projections.quarantine import (
    EVERY_EVENT,
    MEASUREMENTS,
    Unread,
    decode_notifications,
    notifications_of,
    read_section,
    undecoded_topics,
)
from projections.tables import COPY_FROM, building, home_schemas, set_search_path
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 1, 22, 50, tzinfo=timezone.utc)


def plug(total_wh: float) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True, has_emeter=True,
        power_w=1800.0, voltage_v=230.0, current_a=7.8, total_wh=total_wh,
    )


def seed(app: WattLedger) -> None:
    """Two plugs, readings, a rename and a missed poll between them: actions and readings interleaved."""
    plugs = [seed_device(app, f"127.0.0.1:{13000 + i}", plug(10.0 * i), measured_at=T0) for i in range(2)]
    for minute in range(1, 12):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute),
                                    snapshot=plug(10.0 * i + minute)) for i, d in enumerate(plugs)])  # fmt: skip
        if minute == 5:
            device = app.repository.get(plugs[0])
            assert isinstance(device, Device)
            device.rename("Kettle 2", actor="test")
            app.save(device)
            seed_polls(app, [], offline={plugs[1]: 3})


def dump(database_url: str, projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {t.name: conn.execute(f"{t.select} ORDER BY {t.key}").fetchall() for t in projector.tables}


def test_the_chain_and_the_audit_log_built_from_the_engines_sections_equal_those_built_from_the_store(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(app)
    reads: list[str] = []

    def counted(name: str, read: Any) -> Any:
        def records(cur: psycopg.Cursor[Any], events: Any) -> Any:
            reads.append(name)
            return read(cur, events)

        return records

    monkeypatch.setattr(chain, "records_for_events", counted("chain", chain.records_for_events))
    monkeypatch.setattr(audit_projector, "records_for_events",
                        counted("audit", audit_projector.records_for_events))  # fmt: skip
    projectors: list[Projector] = [ChainProjector(), AuditProjector()]
    engine = ProjectionEngine(app, database_url, projectors, batch_size=7)
    engine.setup()
    try:
        engine.catch_up_all()
    finally:
        engine.close()
    assert reads == [], "the engine's sections carry the stored rows: nothing is read again"
    through_engine = {p.name: dump(database_url, p) for p in projectors}
    assert through_engine["chain"]["wl_read.audit_chain"] and through_engine["audit"]["wl_read.audit_log"]

    # The same events handed over outside the engine: each batch reads the stored rows.
    event_log = EventLog(app)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for projector in projectors:
            for table in projector.tables:
                cur.execute(f"TRUNCATE {table.name}")
            position = 0
            while section := read_section(event_log, position, 5):
                set_search_path(cur, home_schemas(projector.tables))
                projector.apply_batch(cur, section.events)
                position = section.ids[-1]
        conn.commit()
    assert set(reads) == {"chain", "audit"}
    assert {p.name: dump(database_url, p) for p in projectors} == through_engine


def test_a_projector_handed_other_events_than_the_sections_gets_no_notifications(
    app: WattLedger, database_url: str
) -> None:
    seed(app)
    seen: list[tuple[bool, bool]] = []

    class Probe:
        name = "probe"
        version = 1
        tables = ()

        def apply_batch(self, cur: psycopg.Cursor[Any], events: Any) -> None:
            held = notifications_of(events)
            shuffled = notifications_of(list(reversed(events))) if len(events) > 1 else None
            seen.append((held is not None and [n.originator_version for n in held] ==
                         [e.originator_version for e in events], shuffled is None))  # fmt: skip

    engine = ProjectionEngine(app, database_url, [Probe()], batch_size=6)
    engine.setup()
    try:
        engine.catch_up_all()
    finally:
        engine.close()
    assert seen and all(aligned and refused for aligned, refused in seen), seen
    assert notifications_of(read_section(EventLog(app), 0, 3).events) is None  # type: ignore[union-attr]


def test_events_every_read_model_of_a_pass_ignores_are_not_decoded_and_change_no_row(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(app)
    reading = get_topic(MeterDay.ReadingRecorded)
    assert undecoded_topics([ChainProjector()]) == {EVERY_EVENT}
    assert undecoded_topics([ChainProjector(), AuditProjector(), IdentityProjector()]) == {
        get_topic(kind) for kind in MEASUREMENTS
    }
    assert undecoded_topics([AuditProjector(), DevicesProjector()]) == frozenset()

    decoded: list[str] = []

    def counted(event_log: EventLog, notifications: Any) -> list[object]:
        decoded.extend(n.topic for n in notifications)
        return decode_notifications(event_log, notifications)

    monkeypatch.setattr(quarantine, "decode_notifications", counted)
    section = read_section(EventLog(app), 0, 1000, skip=undecoded_topics([AuditProjector()]))
    assert section is not None and reading in {n.topic for n in section.notifications}
    for event, notification in zip(section.events, section.notifications, strict=True):
        assert isinstance(event, Unread) == (notification.topic == reading), (event, notification.topic)
    assert reading not in decoded and decoded

    projectors: list[Projector] = [ChainProjector(), AuditProjector(), IdentityProjector(), CommandsProjector(),
                                   ExportsProjector()]  # fmt: skip
    engine = ProjectionEngine(app, database_url, projectors, batch_size=7)
    engine.setup()
    try:
        decoded.clear()
        engine.catch_up_all()
        assert reading not in decoded and decoded
        # A verify decodes every event: the rows projected without the readings are the same.
        monkeypatch.undo()
        assert engine.verify([p.name for p in projectors]) == []
        assert dump(database_url, projectors[1])["wl_read.audit_log"]
    finally:
        engine.close()
    both = ProjectionEngine(app, database_url, [ChainProjector(), DevicesProjector()], batch_size=50)
    both.setup()
    try:
        monkeypatch.setattr(quarantine, "decode_notifications", counted)
        decoded.clear()
        both.catch_up_all()
        assert reading in decoded, "the devices read model needs the readings: they are decoded"
    finally:
        both.close()


def test_a_fleet_projected_in_large_sections_equals_its_replay_one_event_at_a_time(
    app: WattLedger, database_url: str
) -> None:
    """Large sections write each read model's rows by COPY and one upsert (`Table.write`), one
    merged row a device; a replay one event at a time upserts row by row. Same rows."""
    plugs = [seed_device(app, f"127.0.0.1:{14000 + i}", plug(1.0 * i), measured_at=T0) for i in range(COPY_FROM + 6)]
    for minute in (1, 2, 4):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute),
                                    snapshot=plug(1.0 * i + minute)) for i, d in enumerate(plugs)])  # fmt: skip
    projectors = all_projectors(load_settings({**os.environ, "WATTLEDGER_TIMEZONE": "Europe/Berlin"}))
    engine = ProjectionEngine(app, database_url, projectors, batch_size=5000, replay_batch_size=1)
    engine.setup()
    try:
        engine.catch_up_all()
        with psycopg.connect(database_url) as conn:
            count = conn.execute(f"SELECT count(*) FROM {DEVICES.name}").fetchone()
        assert count == (len(plugs),)
        assert engine.verify(["devices", "alerts", "energy", "chain", "audit"]) == []
    finally:
        engine.close()


def test_table_write_upserts_what_executemany_upserts(database_url: str) -> None:
    rows = [
        ReadingRow(device_id=UUID(int=i % 7), channel=f"c\t{i % 3}\\", at=T0 + timedelta(seconds=i), meter="m\n",
                   power_w=None if i % 5 else 1.5 * i, total_wh=float(i), is_on=i % 2 == 0, counted_wh=0.1 * i,
                   wh=None)
        for i in range(COPY_FROM * 2)
    ]  # fmt: skip
    changed = [msgspec.structs.replace(r, power_w=2.0, wh=0.25) for r in rows[::2]]
    outlets = [OutletReading(outlet_id="o", index=0, alias="A", is_on=True, power_w=1.0)]
    devices = [DeviceRow(device_id=UUID(int=i), address=f"127.0.0.1:{i}", alias="x", model="m", device_type="plug",
                         mac="AA", added_at=T0, updated_at=T0, outlets=outlets, relays={"plug": True})
               for i in range(COPY_FROM + 1)]  # fmt: skip
    seen: dict[str, list[Any]] = {}
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        for schema, bulk in (("wl_write_bulk", True), ("wl_write_rows", False)):
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.execute(f"CREATE SCHEMA {schema}")
            with building(schema, [READINGS, DEVICES]):
                for table, batches in ((READINGS, [rows, changed, rows[:3] + rows[:3]]), (DEVICES, [devices])):
                    table.create(cur)
                    for batch in batches:
                        values = [table.values(r) for r in batch]
                        if bulk:
                            table.write(cur, values)
                        else:
                            cur.executemany(table.upsert, values)
                    seen[f"{schema}.{table.bare}"] = cur.execute(f"{table.select} ORDER BY {table.key}").fetchall()
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.commit()
    assert len(seen["wl_write_bulk.energy_readings"]) == len(rows)
    assert seen["wl_write_bulk.energy_readings"] == seen["wl_write_rows.energy_readings"]
    assert seen["wl_write_bulk.devices"] == seen["wl_write_rows.devices"]
