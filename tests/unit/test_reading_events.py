"""A reading's event made directly is the event the library's trigger makes, and its compact stored form
is the same bytes whichever way the fields are encoded."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any
from uuid import UUID

import pytest

from adapters.eventstore import WattLedger
from adapters.stored_form import CompactTranscoder
from domain.meter import RECENT_READINGS, MeterDay
from domain.readings import DeviceSnapshot, OutletReading

DAY = datetime(2026, 6, 1, tzinfo=timezone.utc)
STRIP = DeviceSnapshot(
    alias="Desk", model="HS300", device_type="strip", mac="AA", firmware="1", is_on=True, has_emeter=True,
    power_w=40.5, voltage_v=230.1, current_a=0.17, total_wh=1234.5, rssi=-50,
    outlets=(OutletReading(outlet_id="AA00", index=0, alias="Lamp", is_on=True, power_w=40.5, total_wh=1.25),),
)  # fmt: skip
PLUG = DeviceSnapshot(
    alias="Heater", model="HS110", device_type="plug", mac="BB", firmware="1", is_on=False, has_emeter=True,
    power_w=None, total_wh=7.0,
)  # fmt: skip


def moments() -> list[datetime]:
    """Out of order, past the recent timestamps a meter day keeps, with one offset other than UTC."""
    times = [DAY + timedelta(minutes=7 * n) for n in range(3 * RECENT_READINGS)]
    times.reverse()
    times.insert(5, datetime(2026, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=2))))
    return times


def test_recording_makes_the_event_the_librarys_trigger_makes_and_the_same_state() -> None:
    direct = MeterDay(device_id=UUID(int=1), day=DAY.date().isoformat())
    triggered = MeterDay(device_id=UUID(int=1), day=DAY.date().isoformat())
    direct.recall(())
    triggered.recall(())
    for n, at in enumerate(moments()):
        snapshot = STRIP if n % 2 else PLUG
        assert direct.record(at, snapshot, actor="import")
        triggered._recorded(
            device_id=triggered.device_id, measured_at=at, is_on=snapshot.is_on, power_w=snapshot.power_w,
            voltage_v=snapshot.voltage_v, current_a=snapshot.current_a, total_wh=snapshot.total_wh,
            outlets=list(snapshot.outlets), actor="import", rssi=snapshot.rssi,
        )  # fmt: skip

    made, expected = direct.collect_events(), triggered.collect_events()
    assert [type(e) for e in made] == [type(e) for e in expected]
    assert [{**vars(e), "timestamp": None} for e in made] == [{**vars(e), "timestamp": None} for e in expected]
    assert all(e.timestamp.tzinfo is not None for e in made)
    assert (direct.version, direct.count, direct.recent, direct.forgotten) == (
        triggered.version, triggered.count, triggered.recent, triggered.forgotten
    )
    assert direct.modified_on == made[-1].timestamp


def test_a_meter_day_recorded_directly_reads_back_the_same_from_the_store() -> None:
    app = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    meter = MeterDay(device_id=UUID(int=2), day=DAY.date().isoformat())
    meter.recall(())
    for n, at in enumerate(moments()):
        meter.record(at, STRIP if n % 3 else PLUG, actor="import")
    made = list(meter.pending_events)
    app.store(meter)

    loaded = app.load(meter.id)

    assert isinstance(loaded, MeterDay)
    assert (loaded.version, loaded.count, loaded.recent, loaded.forgotten, loaded.modified_on) == (
        meter.version, meter.count, meter.recent, meter.forgotten, meter.modified_on
    )
    stored = list(app.events.get(meter.id))
    assert stored == made
    assert {e.measured_at for e in stored if isinstance(e, MeterDay.ReadingRecorded)} == set(moments())


class Colour(str, Enum):
    RED = "red"


class Text(str):
    pass


@pytest.mark.parametrize(
    "state",
    [
        {"timestamp": DAY, "device_id": UUID(int=5), "measured_at": DAY, "is_on": True, "power_w": 1.5,
         "voltage_v": None, "current_a": None, "total_wh": 3.0, "outlets": [], "actor": "import", "rssi": None},
        {"timestamp": DAY, "device_id": UUID(int=5), "measured_at": datetime(2026, 6, 1, 2, tzinfo=timezone(
            timedelta(hours=-3))), "is_on": False, "power_w": 0.0, "voltage_v": 230.0, "current_a": 0.1,
         "total_wh": 0.0, "outlets": list(STRIP.outlets), "actor": "user:alice", "rssi": -61},
        {"timestamp": DAY.replace(tzinfo=None), "device_id": UUID(int=5), "day": "2026-06-01"},
        {"count": 7, "unknown_field": [1, 2.5, "x", None, {"nested": UUID(int=9)}], "colour": Colour.RED,
         "text": Text("t"), "outlets": (STRIP.outlets[0],)},
        {"huge": 2**70, "timestamp": DAY},
        {"flag": True, "n": -(2**63), "big": 2**64 - 1},
    ],
)  # fmt: skip
def test_the_fields_encode_to_the_same_bytes_as_the_compact_form(state: dict[str, Any]) -> None:
    app = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    transcoder = app.construct_transcoder()
    assert isinstance(transcoder, CompactTranscoder)

    encoded = transcoder.encode_fields(state)

    assert encoded == transcoder.encode_compact(state)
    assert transcoder.decode(encoded) == transcoder.decode(transcoder.encode_compact(state))


def test_the_stored_form_of_a_recorded_reading_is_the_compact_form_of_its_fields() -> None:
    app = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    meter = MeterDay(device_id=UUID(int=4), day=DAY.date().isoformat())
    meter.record(DAY + timedelta(hours=1), STRIP, actor="import")
    event = meter.collect_events()[-1]
    fields = {k: v for k, v in vars(event).items() if k not in ("originator_id", "originator_version")}

    stored = app.mapper.to_stored_event(event)

    assert stored.state == app.mapper.transcoder.encode_compact(fields)
    assert app.mapper.to_domain_event(stored) == event


def test_a_reading_outside_the_meter_day_is_refused_whatever_its_offset() -> None:
    meter = MeterDay(device_id=UUID(int=6), day=DAY.date().isoformat())
    last = DAY + timedelta(days=1, microseconds=-1)
    assert meter.record(last, PLUG, actor="import")
    assert meter.record(datetime(2026, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=1))), PLUG, actor="import")
    for outside in (DAY + timedelta(days=1), DAY - timedelta(microseconds=1),
                    datetime(2026, 6, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
                    datetime(2026, 6, 1, 23, 30, tzinfo=timezone(timedelta(hours=-1))), DAY.replace(tzinfo=None)):
        with pytest.raises(ValueError, match="is not in day"):
            meter.record(outside, PLUG, actor="import")
    assert meter.count == 2
