"""The compact stored form reads back every field as written: names for indexes at every depth, and
moments with their instant, their UTC offset (or none) and their microseconds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest

from adapters.eventstore import WattLedger
from adapters.stored_form import CompactTranscoder


def transcoder() -> CompactTranscoder:
    made = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"}).construct_transcoder()
    assert isinstance(made, CompactTranscoder)
    return made


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=timezone.utc),
        datetime(2026, 6, 1, 12, 30, 15, 999999, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 6, 1, 12, 30, 15, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
        datetime(2026, 6, 1, 12, 30, 15, 7),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=timezone.utc),
        datetime(1, 1, 1, tzinfo=timezone.utc),
    ],
)  # fmt: skip
def test_a_moment_reads_back_with_its_offset_and_microseconds(moment: datetime) -> None:
    codec = transcoder()

    back = codec.decode(codec.encode_compact({"timestamp": moment, "measured_at": [moment]}))

    for read in (back["timestamp"], back["measured_at"][0]):
        assert (read.replace(tzinfo=None), read.utcoffset()) == (moment.replace(tzinfo=None), moment.utcoffset())


def test_field_indexes_become_names_at_every_depth() -> None:
    codec = transcoder()
    state: dict[str, Any] = {
        "device_id": UUID(int=3),
        "outlets": [{"index": 0, "alias": "a", "recent": [{"count": 1, "state": []}, [{"topic": "t"}], 5]}, []],
        "state": {"recent": {"forgotten": {"day": "2026-06-01"}}, "other": [[{"rssi": -50}]]},
        "unknown": {"3": "text key", "more": [None, 1.5, "x"]},
        "empty": [],
    }  # fmt: skip

    assert codec.decode(codec.encode_compact(state)) == state


def test_one_uuid_object_stands_for_every_reading_of_the_same_id_up_to_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import adapters.stored_form as stored_form

    codec = transcoder()
    first = codec.decode(codec.encode_compact({"device_id": UUID(int=7), "actor": "a"}))["device_id"]
    again = codec.decode(codec.encode_compact({"device_id": UUID(int=7), "originator_topic": "t"}))["device_id"]
    other = codec.decode(codec.encode_compact({"device_id": UUID(int=8)}))["device_id"]

    assert first is again and first == UUID(int=7)
    assert other == UUID(int=8) and other is not first

    monkeypatch.setattr(stored_form, "UUIDS_KEPT", 2)
    third = codec.decode(codec.encode_compact({"device_id": UUID(int=9)}))["device_id"]
    assert third == UUID(int=9)
    assert codec.decode(codec.encode_compact({"device_id": UUID(int=7)}))["device_id"] is not first, "forgotten"
