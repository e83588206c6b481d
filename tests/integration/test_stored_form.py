"""Readings are stored compact; rows stored before, in the library's JSON, still read the same."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import psycopg
from eventsourcing.persistence import JSONTranscoder, Mapper

from adapters.eventstore import WattLedger
from domain.device import Device
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot, OutletReading

DAY = datetime(2026, 6, 1, tzinfo=timezone.utc)
STRIP = DeviceSnapshot(
    alias="Desk", model="HS300", device_type="strip", mac="AA", firmware="1", is_on=True, has_emeter=True,
    power_w=40.5, voltage_v=230.1, current_a=0.17, total_wh=1234.5, rssi=-50,
    outlets=(OutletReading(outlet_id="AA00", index=0, alias="Lamp", is_on=True, power_w=40.5, total_wh=1.25),),
)  # fmt: skip


def test_old_json_rows_and_compact_rows_of_one_stream_read_back_as_the_events_stored(
    app: WattLedger, database_url: str
) -> None:
    legacy_transcoder = JSONTranscoder()
    app.register_transcodings(legacy_transcoder)
    legacy = Mapper[UUID](transcoder=legacy_transcoder)
    meter = MeterDay(device_id=UUID(int=3), day=DAY.date().isoformat())
    meter.record(DAY + timedelta(hours=1), STRIP, actor="system:poller")
    meter.record(DAY + timedelta(hours=2, microseconds=7), STRIP, actor="user:alice")
    old = meter.collect_events()
    app.recorder.insert_events([legacy.to_stored_event(e) for e in old])
    meter.record(datetime(2026, 6, 1, 5, tzinfo=timezone(timedelta(hours=2))), STRIP, actor="import")
    device = Device.from_snapshot("10.0.0.9", STRIP, alias=None, actor="user:alice")
    app.store(meter, device)

    stored = list(app.events.get(meter.id))
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, state FROM wl_events.wattledger_events ORDER BY notification_id"
        ).fetchall()  # fmt: skip

    assert [vars(e) for e in stored[:3]] == [vars(e) for e in old]
    newest = stored[3]
    assert isinstance(newest, MeterDay.ReadingRecorded)
    assert newest.measured_at == DAY + timedelta(hours=3) and newest.measured_at.utcoffset() == timedelta(hours=2)
    assert newest.outlets == list(STRIP.outlets) and newest.device_id == UUID(int=3)
    states = [bytes(state) for _, state in rows]
    assert [s[:1] == b"{" for s in states[:3]] == [True] * 3, "the old rows are JSON"
    reading, added = states[3], states[4]
    assert reading[:1] != b"{" and len(reading) < 0.6 * len(states[2]), "a new reading is compact"
    assert added.decode().startswith("{"), "other events stay JSON"
    loaded = app.load(meter.id)
    assert isinstance(loaded, MeterDay) and loaded.count == 3 and loaded.version == 4


def test_a_state_the_compact_form_cannot_hold_is_stored_as_json() -> None:
    transcoder = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"}).construct_transcoder()
    huge = {"n": 2**70, "at": DAY}

    stored = transcoder.encode_compact(huge)

    assert stored[:1] == b"{" and transcoder.decode(stored) == huge
    small = {"n": 3, "at": DAY, "keys": {1: True, None: False}}
    assert transcoder.decode(transcoder.encode_compact(small)) == transcoder.decode(transcoder.encode(small))
