"""The command handlers over fake ports: an in-memory store, a scripted driver, a stepping clock."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest

from domain.address import DeviceAddress
from domain.commands import (
    AddDevice,
    DiscoverDevices,
    MissedPolls,
    PollResult,
    RecordPolls,
    RemoveDevice,
    RenameDevice,
)
from domain.device import Device, device_id_for
from domain.errors import (
    ConcurrencyConflict,
    DeviceAlreadyExists,
    DeviceNotFound,
    DeviceRemoved,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    InvalidAddress,
    NoKasaDevice,
    UnsupportedDevice,
)
from domain.handlers import POLLS_PER_SAVE, CommandHandlers
from domain.meter import MeterDay
from domain.ports import DeviceDriver
from domain.readings import DeviceSnapshot
from tests.kit import ManualClock, MemoryStore, plug

T0 = datetime(2026, 3, 8, 6, 0, tzinfo=timezone.utc)


class ScriptedDriver(DeviceDriver):
    """Devices answer from a table; an address not in it is unreachable."""

    def __init__(self, devices: dict[str, DeviceSnapshot], found: list[DeviceAddress] | None = None) -> None:
        self.devices = devices
        self.found = found or []
        self.polls: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        self.polls.append(str(address))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if str(address) not in self.devices:
                raise DeviceUnreachable(f"{address}: connection refused")
            return self.devices[str(address)]
        finally:
            self.in_flight -= 1

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return list(self.found)


def readings(store: MemoryStore, device_id: UUID) -> list[MeterDay.ReadingRecorded]:
    return [e for e in store.of_type(MeterDay.ReadingRecorded) if e.device_id == device_id]


def handlers(devices: dict[str, DeviceSnapshot], store: MemoryStore | None = None,
             found: list[DeviceAddress] | None = None) -> tuple[CommandHandlers, MemoryStore, ScriptedDriver]:
    store = store or MemoryStore()
    driver = ScriptedDriver(devices, found)
    return CommandHandlers(store, driver, ManualClock(T0, step=timedelta(seconds=1))), store, driver


async def test_adding_a_device_stores_it_with_its_first_reading_in_one_save() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug(42.0)})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", alias="Desk", actor="user:ann"))
    assert added.device_id == device_id_for("10.0.0.5")
    assert store.saves == 1
    [created] = store.of_type(Device.Added, added.device_id)
    assert isinstance(created, Device.Added)
    assert (created.alias, created.actor) == ("Desk", "user:ann")
    [reading] = readings(store, added.device_id)
    assert reading.total_wh == 42.0


async def test_an_unreachable_device_stores_nothing() -> None:
    cmd, store, _ = handlers({})
    with pytest.raises(DeviceUnreachable):
        await cmd.add_device(AddDevice(address="10.0.0.9", actor="user:ann"))
    assert store.events == {}


class FailingDriver(ScriptedDriver):
    def __init__(self, failure: DeviceError) -> None:
        super().__init__({})
        self.failure = failure

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        raise self.failure


@pytest.mark.parametrize("failure", [
    DeviceUnreachable("10.0.0.9:22: Unable to connect to the device: [Errno 111] Connect call failed"),
    DeviceUnreachable("10.0.0.9:22: 17 bytes read on a total of 1397966893 expected bytes"),
    DeviceTimeout("10.0.0.9:22: no answer within 5 s"),
    UnsupportedDevice("10.0.0.9:22: IotBulb is not a plug or strip"),
    DeviceError("10.0.0.9:22: anything else"),
])  # fmt: skip
async def test_adding_gives_one_answer_whatever_kept_the_device_from_answering(failure: DeviceError) -> None:
    store = MemoryStore()
    cmd = CommandHandlers(store, FailingDriver(failure), ManualClock(T0, step=timedelta(seconds=1)))
    with pytest.raises(NoKasaDevice) as raised:
        await cmd.add_device(AddDevice(address="10.0.0.9:22", actor="user:ann"))
    assert (str(raised.value), raised.value.code) == ("no Kasa device answered at this address", "DEVICE_UNREACHABLE")
    assert str(failure) in raised.value.reason and raised.value.__cause__ is failure
    assert store.events == {}


async def test_a_bad_address_is_refused_before_any_device_is_contacted() -> None:
    cmd, store, driver = handlers({})
    with pytest.raises(InvalidAddress):
        await cmd.add_device(AddDevice(address="10.0.0.1:99999", actor="u"))
    assert driver.polls == [] and store.events == {}


async def test_adding_a_present_device_again_is_refused_without_contacting_it() -> None:
    cmd, store, driver = handlers({"10.0.0.5": plug()})
    await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    with pytest.raises(DeviceAlreadyExists):
        await cmd.add_device(AddDevice(address="10.0.0.5:9999", actor="u"))
    assert driver.polls == ["10.0.0.5"]


async def test_a_removed_device_added_again_is_restored_with_its_history() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    await cmd.remove_device(RemoveDevice(device_id=added.device_id, actor="u"))
    again = await cmd.add_device(AddDevice(address="10.0.0.5", alias="Back", actor="u"))
    assert again.device_id == added.device_id
    assert len(store.of_type(Device.Restored, added.device_id)) == 1
    assert len(readings(store, added.device_id)) == 2


async def test_removing_twice_or_an_unknown_device_is_refused() -> None:
    cmd, _, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    await cmd.remove_device(RemoveDevice(device_id=added.device_id, actor="u"))
    with pytest.raises(DeviceRemoved):
        await cmd.remove_device(RemoveDevice(device_id=added.device_id, actor="u"))
    with pytest.raises(DeviceNotFound):
        await cmd.rename_device(RenameDevice(device_id=device_id_for("10.9.9.9"), alias="x", actor="u"))


async def test_a_conflict_is_retried_once_from_a_fresh_load() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    store.fail_next(ConcurrencyConflict("scripted conflict"))
    await cmd.rename_device(RenameDevice(device_id=added.device_id, alias="Kettle", actor="u"))
    [renamed] = store.of_type(Device.Renamed, added.device_id)
    assert isinstance(renamed, Device.Renamed) and renamed.alias == "Kettle"


async def test_a_second_conflict_reaches_the_caller_as_a_domain_conflict() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    store.fail_next(ConcurrencyConflict("scripted conflict"), ConcurrencyConflict("scripted conflict"))
    with pytest.raises(ConcurrencyConflict):
        await cmd.rename_device(RenameDevice(device_id=added.device_id, alias="Kettle", actor="u"))
    assert store.of_type(Device.Renamed, added.device_id) == []


async def test_a_repeated_poll_result_records_its_reading_once() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    result = PollResult(device_id=added.device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(11.0))
    first = await cmd.record_polls(RecordPolls(results=(result,), actor="system:poller"))
    second = await cmd.record_polls(RecordPolls(results=(result,), actor="system:poller"))
    assert (first.recorded, second.recorded) == (1, 0)
    assert len(readings(store, added.device_id)) == 2


async def test_several_readings_of_one_device_in_one_call_are_all_recorded() -> None:
    """A poller that fell behind hands over more than one reading per device, some on a new UTC day."""
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    late = T0.replace(hour=23, minute=59)
    times = [late, late + timedelta(seconds=30), late + timedelta(minutes=1), late + timedelta(minutes=2)]
    results = tuple(
        PollResult(device_id=added.device_id, measured_at=at, snapshot=plug(12.0 + n)) for n, at in enumerate(times)
    )
    stored = await cmd.record_polls(RecordPolls(results=results, actor="system:poller"))
    assert stored.recorded == 4
    assert sorted(e.measured_at for e in readings(store, added.device_id))[-4:] == times


async def test_polls_are_stored_in_parts_and_a_device_offline_once() -> None:
    devices = {f"10.0.{n // 256}.{n % 256}": plug() for n in range(POLLS_PER_SAVE + 20)}
    cmd, store, _ = handlers(devices)
    ids = [(await cmd.add_device(AddDevice(address=a, actor="u"))).device_id for a in devices]
    saves_before = store.saves
    at = T0 + timedelta(hours=1)
    results = tuple(PollResult(device_id=d, measured_at=at, snapshot=plug(20.0)) for d in ids[1:])
    missed = (MissedPolls(device_id=ids[0], count=3),)
    stored = await cmd.record_polls(RecordPolls(results=results, offline=missed, actor="system:poller"))
    await cmd.record_polls(RecordPolls(offline=(MissedPolls(device_id=ids[0], count=4),), actor="system:poller"))
    assert stored.recorded == len(ids) - 1
    assert store.saves - saves_before == 3
    assert len(store.of_type(Device.WentOffline, ids[0])) == 1


async def test_polls_of_unknown_or_removed_devices_are_skipped() -> None:
    cmd, store, _ = handlers({"10.0.0.5": plug()})
    added = await cmd.add_device(AddDevice(address="10.0.0.5", actor="u"))
    await cmd.remove_device(RemoveDevice(device_id=added.device_id, actor="u"))
    ghost = device_id_for("10.0.0.77")
    results = tuple(
        PollResult(device_id=d, measured_at=T0 + timedelta(minutes=2), snapshot=plug()) for d in (added.device_id, ghost)
    )
    stored = await cmd.record_polls(RecordPolls(results=results, actor="system:poller"))
    assert stored.recorded == 0
    assert ghost not in store.events


async def test_discovery_contacts_found_devices_concurrently_within_a_bound() -> None:
    found = [DeviceAddress(host=f"10.1.0.{n}") for n in range(1, 41)]
    answering = {str(a): plug() for a in found[:30]}
    cmd, store, driver = handlers(answering, found=found)
    await cmd.add_device(AddDevice(address=str(found[0]), actor="u"))
    result = await cmd.discover_devices(DiscoverDevices(target="10.1.0.255", actor="u"))
    assert result.discovered == 40
    assert len(result.added) == 29 and result.already_known == [str(found[0])]
    assert len(result.unreachable) == 10
    assert 1 < driver.most_in_flight <= 16
