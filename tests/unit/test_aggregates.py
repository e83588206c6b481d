from __future__ import annotations

from datetime import datetime, timezone

import pytest

from domain.device import Device, device_id_for
from domain.errors import DeviceRemoved
from domain.meter import MeterDay, meter_day_id
from domain.readings import DeviceSnapshot, OutletReading

AT = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)


def plug(*, is_on: bool = True, total_wh: float = 100.0) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA:BB", firmware="1.5", is_on=is_on,
        has_emeter=True, power_w=40.0, voltage_v=230.0, current_a=0.17, total_wh=total_wh,
    )


def strip(states: list[bool]) -> DeviceSnapshot:
    outlets = tuple(OutletReading(outlet_id=f"o{i}", index=i, alias=f"O{i}", is_on=s) for i, s in enumerate(states))
    return DeviceSnapshot(
        alias="Strip", model="KP303", device_type="strip", mac="CC", firmware="1", is_on=any(states),
        has_emeter=False, outlets=outlets,
    )


def names(device: Device | MeterDay) -> list[str]:
    return [type(e).__name__ for e in device.collect_events()]


def test_two_adds_of_one_address_name_the_same_device() -> None:
    a = Device.from_snapshot("127.0.0.1:10001", plug(), alias=None, actor="t")
    b = Device.from_snapshot("127.0.0.1:10001", plug(), alias=None, actor="t")
    assert a.id == b.id == device_id_for("127.0.0.1:10001")


def test_every_event_carries_its_actor() -> None:
    device = Device.from_snapshot("h", plug(), alias="Desk", actor="user:7")
    device.rename("Desk 2", actor="user:8")
    events = device.collect_events()
    assert [e.actor for e in events] == ["user:7", "user:7", "user:8"]  # type: ignore[attr-defined]


def test_relay_change_is_recorded_once_per_change() -> None:
    device = Device.from_snapshot("h", plug(is_on=True), alias=None, actor="t")
    device.collect_events()
    device.observe_relays(plug(is_on=True), actor="p")
    assert names(device) == []
    device.observe_relays(plug(is_on=False), actor="p")
    assert names(device) == ["StateChanged"]


def test_each_strip_outlet_is_its_own_relay() -> None:
    device = Device.from_snapshot("h", strip([True, False, True]), alias=None, actor="t")
    assert names(device) == ["Added", "StateChanged", "StateChanged", "StateChanged"]
    device.observe_relays(strip([True, True, True]), actor="p")
    events = device.collect_events()
    assert [(type(e).__name__, e.outlet_index) for e in events] == [("StateChanged", 1)]  # type: ignore[attr-defined]


def test_device_goes_offline_once_and_comes_back_once() -> None:
    device = Device.from_snapshot("h", plug(), alias=None, actor="t")
    device.collect_events()
    device.went_offline(3, actor="p")
    device.went_offline(4, actor="p")
    device.came_online(actor="p")
    device.came_online(actor="p")
    assert names(device) == ["WentOffline", "CameOnline"]


def test_removed_device_takes_no_rename() -> None:
    device = Device.from_snapshot("h", plug(), alias=None, actor="t")
    device.remove(actor="u")
    with pytest.raises(DeviceRemoved):
        device.rename("x", actor="u")


def test_duplicate_reading_changes_nothing_twice() -> None:
    device_id = device_id_for("h")
    meter = MeterDay(device_id=device_id, day="2026-11-22")
    assert meter.id == meter_day_id(device_id, AT.date())
    assert meter.record(AT, plug(), actor="p")
    assert not meter.record(AT, plug(total_wh=999), actor="p")
    assert names(meter) == ["Opened", "ReadingRecorded"]


def test_reading_from_another_day_is_refused_by_the_day_stream() -> None:
    meter = MeterDay(device_id=device_id_for("h"), day="2026-11-21")
    with pytest.raises(ValueError):
        meter.record(AT, plug(), actor="p")
