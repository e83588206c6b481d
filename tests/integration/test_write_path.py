"""The command handlers over the real event store on PostgreSQL: conflicts, retries, idempotence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from adapters.eventstore import StoreUnitOfWork, WattLedger, ensure_events_schema, store_env
from domain.commands import AddDevice, PollResult, RecordPolls, RenameDevice
from domain.device import device_id_for
from domain.errors import ConcurrencyConflict, DeviceAlreadyExists
from domain.handlers import CommandHandlers
from domain.readings import DeviceSnapshot
from tests.kit import ManualClock, StaticDriver

T0 = datetime(2026, 11, 22, 23, 50, tzinfo=timezone.utc)


def plug(total_wh: float, *, is_on: bool = True) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=is_on, has_emeter=True,
        power_w=60.0, voltage_v=230.0, current_a=0.26, total_wh=total_wh,
    )


@pytest.fixture
def apps(database_url: str) -> Iterator[tuple[WattLedger, WattLedger]]:
    """Two application objects on one database, as two processes would have."""
    ensure_events_schema(database_url)
    first, second = WattLedger(store_env(database_url)), WattLedger(store_env(database_url))
    yield first, second
    first.close()
    second.close()


def handlers(app: WattLedger, snapshot: DeviceSnapshot, *, cache: bool = False, at: datetime = T0) -> CommandHandlers:
    return CommandHandlers(StoreUnitOfWork(app, cache=cache), StaticDriver(snapshot), ManualClock(at))


async def test_a_duplicate_add_is_refused_and_stores_nothing(apps: tuple[WattLedger, WattLedger]) -> None:
    app, _ = apps
    await handlers(app, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10004", actor="t"))
    before = app.recorder.max_notification_id()
    with pytest.raises(DeviceAlreadyExists):
        await handlers(app, plug(2.0)).add_device(AddDevice(address="127.0.0.1:10004", actor="t"))
    assert app.recorder.max_notification_id() == before


async def test_two_processes_adding_one_device_at_once_store_it_once(apps: tuple[WattLedger, WattLedger]) -> None:
    first, second = apps
    outcomes = await asyncio.gather(
        handlers(first, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10005", actor="a")),
        handlers(second, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10005", actor="b")),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], DeviceAlreadyExists)
    added = [n for n in first.recorder.select_notifications(1, 100) if n.topic.endswith("Device.Added")]
    assert len(added) == 1


async def test_a_raw_version_clash_surfaces_as_a_domain_conflict(apps: tuple[WattLedger, WattLedger]) -> None:
    first, second = apps
    device_id = (await handlers(first, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10006", actor="t"))).device_id
    mine, theirs = StoreUnitOfWork(first), StoreUnitOfWork(second)
    a, b = await mine.device(device_id), await theirs.device(device_id)
    assert a is not None and b is not None
    a.rename("one", actor="t")
    b.rename("two", actor="t")
    await mine.save(a)
    with pytest.raises(ConcurrencyConflict):
        await theirs.save(b)


async def test_a_poller_with_a_stale_cached_device_retries_after_another_process_wrote(
    apps: tuple[WattLedger, WattLedger],
) -> None:
    api_side, poller_side = apps
    device_id = device_id_for("127.0.0.1:10030")
    await handlers(api_side, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10030", actor="user:1"))
    poller = handlers(poller_side, plug(1.0), cache=True)
    first = PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(2.0))
    await poller.record_polls(RecordPolls(results=(first,), actor="p"))
    await handlers(api_side, plug(1.0)).rename_device(
        RenameDevice(device_id=device_id, alias="Renamed elsewhere", actor="user:1")
    )
    second = PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=2), snapshot=plug(3.0, is_on=False))
    stored = await poller.record_polls(RecordPolls(results=(second,), actor="p"))
    assert stored.recorded == 1
    device = await StoreUnitOfWork(api_side).device(device_id)
    assert device is not None
    assert (device.alias, device.relays[None]) == ("Renamed elsewhere", False)


async def test_a_poll_stored_twice_records_one_reading(apps: tuple[WattLedger, WattLedger]) -> None:
    app, _ = apps
    device_id = device_id_for("127.0.0.1:10040")
    await handlers(app, plug(1.0)).add_device(AddDevice(address="127.0.0.1:10040", actor="t"))
    result = PollResult(device_id=device_id, measured_at=T0 + timedelta(minutes=1), snapshot=plug(2.0))
    cached, fresh = handlers(app, plug(1.0), cache=True), handlers(app, plug(1.0))
    assert (await cached.record_polls(RecordPolls(results=(result,), actor="p"))).recorded == 1
    assert (await fresh.record_polls(RecordPolls(results=(result,), actor="p"))).recorded == 0
    readings = [n for n in app.recorder.select_notifications(1, 100) if n.topic.endswith("ReadingRecorded")]
    assert len(readings) == 2


async def test_a_poll_cycle_of_many_devices_is_stored_whole_and_only_once(
    apps: tuple[WattLedger, WattLedger],
) -> None:
    app, _ = apps
    addresses = [f"127.0.1.{i // 250}:{10100 + i}" for i in range(450)]
    for address in addresses:
        await handlers(app, plug(0.0)).add_device(AddDevice(address=address, actor="t"))
    results = tuple(
        PollResult(device_id=device_id_for(a), measured_at=T0 + timedelta(minutes=1), snapshot=plug(1.0))
        for a in addresses
    )
    poller = handlers(app, plug(0.0), cache=True)
    assert (await poller.record_polls(RecordPolls(results=results, actor="p"))).recorded == 450
    assert (await poller.record_polls(RecordPolls(results=results, actor="p"))).recorded == 0
