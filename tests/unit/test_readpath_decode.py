"""A section's events decoded together are the events the library's mapper decodes one by one, and a
stored event the mapper refuses is refused the same way."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import MapperDeserialisationError, Notification, StoredEvent
from eventsourcing.utils import get_topic

from adapters.eventstore import WattLedger
from adapters.stored_form import CompactMapper
from domain.device import Device
from domain.meter import MeterDay
from domain.readings import OutletReading

T0 = datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


class Labelled(Aggregate):
    """An aggregate whose event gained a version: stored states of version 1 are upcast as they are read."""

    class Named(Aggregate.Event):
        class_version = 2
        name: str
        note: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["note"] = "written before notes"


def mapper() -> CompactMapper:
    made = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper
    assert isinstance(made, CompactMapper)
    return made


def reading(meter: UUID, version: int, outlets: list[OutletReading]) -> MeterDay.ReadingRecorded:
    return MeterDay.ReadingRecorded(  # type: ignore[call-arg]
        originator_id=meter, originator_version=version, timestamp=T0, device_id=UUID(int=7), measured_at=T0,
        is_on=True, power_w=40.5, voltage_v=None, current_a=0.17, total_wh=1.0, outlets=outlets, actor="test",
    )  # fmt: skip


def stored_section(codec: CompactMapper) -> list[StoredEvent]:
    meter, device, labelled = uuid4(), uuid4(), uuid4()
    added = Device.Added(  # type: ignore[call-arg]
        originator_id=device, originator_version=1, timestamp=T0, originator_topic=get_topic(Device),
        address="10.0.0.1", alias="Kettle", model="HS110", device_type="plug", mac="AA", outlets=[], actor="test",
    )  # fmt: skip
    named = Labelled.Named(  # type: ignore[call-arg]
        originator_id=labelled, originator_version=2, timestamp=T0, name="n", note="kept"
    )
    strip = [OutletReading(outlet_id="o1", index=0, alias="a", is_on=True, power_w=1.5)]
    events: list[Any] = [added, reading(meter, 2, []), named, reading(meter, 3, strip)]
    stored = [codec.to_stored_event(e) for e in events]
    upcast = StoredEvent(originator_id=labelled, originator_version=1, topic=get_topic(Labelled.Named),
                         state=codec.transcoder.encode({"timestamp": T0, "name": "old"}))  # fmt: skip
    # The store may hand an originator id as text: the library's id conversion makes it a UUID.
    texted = StoredEvent(originator_id=str(meter), originator_version=4, topic=stored[1].topic,
                         state=stored[1].state)  # fmt: skip
    with_version = StoredEvent(originator_id=device, originator_version=2, topic=stored[0].topic,
                               state=codec.transcoder.encode({**codec.transcoder.decode(stored[0].state),
                                                              "class_version": 1}))  # fmt: skip
    return [*stored, upcast, texted, with_version]


def as_read(events: list[Any]) -> list[tuple[type, list[tuple[str, Any]]]]:
    return [(type(e), [(k, (type(v), v)) for k, v in vars(e).items()]) for e in events]


def test_a_section_decoded_together_gives_the_events_decoded_one_by_one() -> None:
    codec = mapper()
    section = stored_section(codec)

    together = codec.to_domain_events(section)

    assert as_read(together) == as_read([codec.to_domain_event(s) for s in section])
    assert vars(together[4]) == {"timestamp": T0, "name": "old", "note": "written before notes",
                                 "originator_id": section[4].originator_id, "originator_version": 1}  # fmt: skip
    assert isinstance(vars(together[5])["originator_id"], UUID)
    assert "class_version" not in vars(together[6])


def test_notifications_decode_as_their_stored_events() -> None:
    codec = mapper()
    section = [Notification(id=i + 1, originator_id=s.originator_id, originator_version=s.originator_version,
                            topic=s.topic, state=s.state) for i, s in enumerate(stored_section(codec))]  # fmt: skip

    assert as_read(codec.to_domain_events(section)) == as_read([codec.to_domain_event(s) for s in section])


def test_a_state_that_does_not_decode_is_refused_as_the_mapper_refuses_it() -> None:
    codec = mapper()
    section = stored_section(codec)
    section[2] = StoredEvent(originator_id=uuid4(), originator_version=1, topic=section[1].topic, state=b"\xc1")

    with pytest.raises(MapperDeserialisationError) as alone:
        codec.to_domain_event(section[2])
    with pytest.raises(MapperDeserialisationError) as together:
        codec.to_domain_events(section)
    assert str(together.value) == str(alone.value)
