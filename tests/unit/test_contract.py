"""The public event contract: an allowlist per event type, a typed envelope, lossless round trips."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
import structlog
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, StoredEvent, UUIDAsHex
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import adapters.contract as contract
import domain
from adapters.contract import (
    CONTRACT,
    NO_ACTOR,
    ContractError,
    DeviceAdded,
    DeviceRenamed,
    DeviceStateChanged,
    EventData,
    MeterDayOpened,
    Outlet,
    ReadingRecorded,
    UnknownEvent,
    data_type,
    decode_data,
    decode_envelope,
    encode_envelope,
    event_data,
)
from domain.address import parse_address
from domain.device import Device
from domain.errors import InvalidAddress
from domain.meter import MeterDay, utc_day
from domain.readings import DeviceSnapshot, OutletReading

AT = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def declared_events() -> Iterator[type[Any]]:
    """Every event class an aggregate in `domain/` declares, as eventsourcing triggers it."""
    seen: set[type[Any]] = set()
    for info in pkgutil.walk_packages(domain.__path__, "domain."):
        module = importlib.import_module(info.name)
        for owner in vars(module).values():
            if not (inspect.isclass(owner) and issubclass(owner, Aggregate) and owner.__module__.startswith("domain.")):
                continue
            events = {
                name: cls
                for name, cls in vars(owner).items()
                if inspect.isclass(cls)
                and issubclass(cls, Aggregate.Event)
                and cls.__qualname__ == f"{owner.__qualname__}.{name}"
                and name != "Event"
            }
            if any(issubclass(cls, Aggregate.Created) for name, cls in events.items() if name != "Created"):
                events.pop("Created", None)  # the implicit creation event, replaced by a declared one
            for cls in events.values():
                if cls not in seen:
                    seen.add(cls)
                    yield cls


def strip_snapshot(*, alias: str = "desk", power_w: float | None = 12.5) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias=alias,
        model="HS300",
        device_type="strip",
        mac="50:c7:bf:00:00:01",
        firmware="1.0.12",
        is_on=True,
        has_emeter=True,
        rssi=-61,
        power_w=power_w,
        voltage_v=230.1,
        current_a=0.05,
        total_wh=1234.5,
        outlets=(
            OutletReading(outlet_id="out-0", index=0, alias="lamp", is_on=True, power_w=power_w, total_wh=10.0),
            OutletReading(outlet_id="out-1", index=1, alias="fan", is_on=False),
        ),
    )


def device_history() -> list[Any]:
    device = Device.from_snapshot("10.0.0.7", strip_snapshot(), alias=None, actor="system:poller")
    device.rename("kettle", actor="admin@example.org")
    device.went_offline(3, actor="system:poller")
    device.came_online(actor="system:poller")
    device.remove(actor="admin@example.org")
    device.restore(strip_snapshot(alias="desk"), alias="desk two", actor="admin@example.org")
    return list(device.collect_events())


def meter_history(device_id: UUID, snapshot: DeviceSnapshot, at: datetime) -> list[Any]:
    day = MeterDay(device_id=device_id, day=utc_day(at).isoformat())
    day.record(at, snapshot, actor="system:poller")
    return list(day.collect_events())


def test_every_domain_event_has_a_contract_entry() -> None:
    events = list(declared_events())
    assert {Device.Added, MeterDay.ReadingRecorded} <= set(events)
    assert [cls.__qualname__ for cls in events if cls not in CONTRACT] == []


def test_contract_entries_name_only_fields_their_event_declares() -> None:
    for event_cls, data_cls in CONTRACT.items():
        declared = set(event_cls.__dataclass_fields__)
        assert set(data_cls.__struct_fields__) <= declared, event_cls.__qualname__
        assert not {"originator_id", "originator_version", "timestamp", "originator_topic"} & set(
            data_cls.__struct_fields__
        )


def test_a_contract_entry_naming_a_missing_field_is_refused() -> None:
    class Misnamed(EventData, frozen=True, kw_only=True):
        nickname: str

    with pytest.raises(ContractError, match="nickname"):
        contract._contract({Device.Renamed: Misnamed})


class Account(Aggregate):
    """An identity aggregate of the kind a later release adds: its events hold a secret."""

    class Registered(Aggregate.Created):
        email: str
        password_hash: str
        actor: str

    class PasswordChanged(Aggregate.Event):
        password_hash: str
        actor: str

    @classmethod
    def register(cls, email: str, password_hash: str) -> Account:
        return cls._create(cls.Registered, email=email, password_hash=password_hash, actor="anonymous@10.0.0.2")

    def __init__(self, email: str, password_hash: str, actor: str) -> None:
        self.email = email
        self.password_hash = password_hash

    def change_password(self, password_hash: str) -> None:
        self.trigger_event(self.PasswordChanged, password_hash=password_hash, actor="user:ada")


class AccountRegistered(EventData, frozen=True, kw_only=True):
    email: str


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as logs:
        monkeypatch.setattr(contract, "log", structlog.get_logger("test_contract"))
        monkeypatch.setattr(contract, "_warned", set())
        yield logs


def test_an_unlisted_event_is_published_without_its_fields_and_warned_about_once(
    captured: list[dict[str, Any]],
) -> None:
    account = Account.register("ada@example.org", SECRET)
    account.change_password(SECRET[::-1])
    registered, changed = account.collect_events()

    bodies = [encode_envelope(1, registered), encode_envelope(2, changed), encode_envelope(3, changed)]

    for body in bodies:
        assert b"password_hash" not in body
        assert SECRET.encode() not in body and SECRET[::-1].encode() not in body
        assert b"ada@example.org" not in body
        assert decode_envelope(body).data == {}
    envelope = decode_envelope(bodies[0])
    assert (envelope.aggregate, envelope.event, envelope.actor) == ("account", "Registered", "anonymous@10.0.0.2")
    warnings = [e for e in captured if e["log_level"] == "warning"]
    assert [(w["event"], w["event_type"]) for w in warnings] == [
        ("contract.event_not_listed", "Account.Registered"),
        ("contract.event_not_listed", "Account.PasswordChanged"),
    ]


def test_a_listed_event_publishes_only_the_fields_its_entry_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        contract, "CONTRACT", MappingProxyType({**CONTRACT, Account.Registered: AccountRegistered})
    )
    [registered] = Account.register("ada@example.org", SECRET).collect_events()

    body = encode_envelope(9, registered)

    assert b"password_hash" not in body and SECRET.encode() not in body
    assert decode_envelope(body).data == {"email": "ada@example.org"}


def test_every_device_event_round_trips_into_its_typed_struct() -> None:
    events = device_history()
    assert [type(e).__name__ for e in events] == [
        "Added", "StateChanged", "StateChanged", "Renamed", "WentOffline", "CameOnline", "Removed", "Restored",
    ]

    for position, event in enumerate(events, start=40):
        envelope = decode_envelope(encode_envelope(position, event))
        typed = decode_data(envelope)
        assert type(typed) is CONTRACT[type(event)] is data_type("device", type(event).__name__)
        assert typed == event_data(event)
        for field in typed.__struct_fields__:
            assert getattr(typed, field) == getattr(event, field)
        assert (envelope.notification_id, envelope.originator_id, envelope.version) == (
            position,
            event.originator_id,
            event.originator_version,
        )
        assert (envelope.aggregate, envelope.event, envelope.actor) == ("device", type(event).__name__, event.actor)
        assert envelope.timestamp == event.timestamp and envelope.timestamp.utcoffset() == timedelta(0)

    added = decode_data(decode_envelope(encode_envelope(1, events[0])))
    assert added == DeviceAdded(
        address="10.0.0.7", alias="desk", model="HS300", device_type="strip", mac="50:c7:bf:00:00:01",
        outlets=["out-0", "out-1"],
    )
    assert decode_data(decode_envelope(encode_envelope(2, events[1]))) == DeviceStateChanged(is_on=True, outlet_index=0)
    assert decode_data(decode_envelope(encode_envelope(4, events[3]))) == DeviceRenamed(alias="kettle")


def test_a_reading_round_trips_with_typed_outlets_and_the_day_opening_with_the_system_actor() -> None:
    device_id = uuid4()
    opened, recorded = meter_history(device_id, strip_snapshot(), AT)

    opening = decode_envelope(encode_envelope(1, opened))
    reading = decode_envelope(encode_envelope(2, recorded))

    assert opening.actor == NO_ACTOR and opening.aggregate == "meter"
    assert decode_data(opening) == MeterDayOpened(device_id=device_id, day=date(2026, 3, 1))
    typed = decode_data(reading)
    assert isinstance(typed, ReadingRecorded)
    assert typed.outlets == [
        Outlet(outlet_id="out-0", index=0, alias="lamp", is_on=True, power_w=12.5, total_wh=10.0),
        Outlet(outlet_id="out-1", index=1, alias="fan", is_on=False),
    ]
    assert (typed.device_id, typed.measured_at, typed.rssi, typed.total_wh) == (device_id, AT, -61, 1234.5)
    assert reading.actor == "system:poller"


def test_the_envelope_carries_exactly_the_documented_fields() -> None:
    [_, recorded] = meter_history(uuid4(), strip_snapshot(), AT)

    raw = msgspec.json.decode(encode_envelope(5, recorded))

    assert list(raw) == [
        "notification_id", "originator_id", "version", "aggregate", "event", "timestamp", "actor", "data",
    ]
    assert list(raw["data"]) == [
        "device_id", "measured_at", "is_on", "power_w", "voltage_v", "current_a", "total_wh", "outlets", "rssi",
    ]
    assert raw["timestamp"].endswith("Z")


def test_an_unknown_event_pair_is_not_decoded_into_any_struct() -> None:
    [_, recorded] = meter_history(uuid4(), strip_snapshot(), AT)
    envelope = decode_envelope(encode_envelope(5, recorded))
    alien = msgspec.structs.replace(envelope, aggregate="account", event="Registered")

    assert data_type("account", "Registered") is None
    with pytest.raises(UnknownEvent):
        decode_data(alien)


meter_value = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)
outlets = st.lists(
    st.builds(
        OutletReading,
        outlet_id=st.text(min_size=1, max_size=12),
        index=st.integers(0, 15),
        alias=st.text(max_size=30),
        is_on=st.booleans(),
        power_w=meter_value,
        voltage_v=meter_value,
        current_a=meter_value,
        total_wh=meter_value,
    ),
    max_size=6,
).map(tuple)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)


@given(
    at=moments,
    is_on=st.booleans(),
    power_w=meter_value,
    voltage_v=meter_value,
    current_a=meter_value,
    total_wh=meter_value,
    rssi=st.none() | st.integers(-120, 0),
    children=outlets,
    notification_id=st.integers(1, 2**62),
)
def test_any_reading_survives_the_envelope_unchanged(
    at: datetime,
    is_on: bool,
    power_w: float | None,
    voltage_v: float | None,
    current_a: float | None,
    total_wh: float | None,
    rssi: int | None,
    children: tuple[OutletReading, ...],
    notification_id: int,
) -> None:
    snapshot = DeviceSnapshot(
        alias="any", model="HS300", device_type="strip", mac="m", firmware="f", is_on=is_on, has_emeter=True,
        rssi=rssi, power_w=power_w, voltage_v=voltage_v, current_a=current_a, total_wh=total_wh, outlets=children,
    )
    device_id = uuid4()
    [_, recorded] = meter_history(device_id, snapshot, at)

    envelope = decode_envelope(encode_envelope(notification_id, recorded))
    typed = decode_data(envelope)

    assert envelope.notification_id == notification_id
    assert typed == ReadingRecorded(
        device_id=device_id,
        measured_at=at,
        is_on=is_on,
        power_w=power_w,
        voltage_v=voltage_v,
        current_a=current_a,
        total_wh=total_wh,
        outlets=[Outlet(**msgspec.structs.asdict(o)) for o in children],
        rssi=rssi,
    )


def test_a_push_only_device_publishes_its_kind_and_an_older_added_reads_as_polled() -> None:
    device = Device.push_only_device(alias="shed meter", model="esp32", actor="user:ada")
    [added] = device.collect_events()
    published = decode_data(decode_envelope(encode_envelope(1, added)))
    assert published == DeviceAdded(
        address=device.address, alias="shed meter", model="esp32", device_type="push", mac="", outlets=[],
        push_only=True,
    )
    assert device.address.startswith("push:")
    with pytest.raises(InvalidAddress):
        parse_address(device.address)

    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    mapper: Mapper[UUID] = Mapper(transcoder=transcoder)
    polled = Device.from_snapshot("10.0.0.7", strip_snapshot(), alias=None, actor="system:poller").collect_events()[0]
    stored = mapper.to_stored_event(polled)
    state = transcoder.decode(stored.state)
    del state["push_only"]
    older = mapper.to_domain_event(
        StoredEvent(
            originator_id=stored.originator_id, originator_version=stored.originator_version,
            topic=stored.topic, state=transcoder.encode(state),
        )
    )  # fmt: skip
    loaded = Device.Added.mutate(older, None)  # type: ignore[arg-type]
    assert isinstance(loaded, Device) and loaded.push_only is False
    assert decode_data(decode_envelope(encode_envelope(1, older))) == DeviceAdded(
        address="10.0.0.7", alias="desk", model="HS300", device_type="strip", mac="50:c7:bf:00:00:01",
        outlets=["out-0", "out-1"],
    )
