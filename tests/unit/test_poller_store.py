"""The poller's store queue and retry schedule over fake ports: no sockets, no database."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import datetime, timedelta, timezone
from uuid import UUID

from eventsourcing.persistence import OperationalError

from adapters.poller import AllDevices, Poller, retry_delay
from domain.address import DeviceAddress
from domain.meter import MeterDay
from domain.ports import DeviceDriver
from domain.readings import DeviceSnapshot
from tests.kit import ManualClock, MemoryStore, RecordingHandlers, eventually, save_devices


def plug() -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True,
        has_emeter=True, power_w=5.0, total_wh=time.time() / 3600,
    )


class Answering(DeviceDriver):
    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        await asyncio.sleep(0)
        return plug()

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


def assignment(devices: dict[UUID, str]) -> AllDevices:
    async def listing() -> list[tuple[UUID, str]]:
        return list(devices.items())

    return AllDevices(listing, refresh_every=0.5)


def readings(store: MemoryStore) -> list[tuple[UUID, datetime]]:
    return [(e.device_id, e.measured_at) for e in store.of_type(MeterDay.ReadingRecorded)]


async def test_an_entry_the_store_always_rejects_is_dropped_and_the_others_are_stored() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 6)
    poison = next(iter(devices))
    store.refuse(lambda a: getattr(a, "device_id", a.id) == poison, TypeError("an aggregate the store cannot encode"))
    poller = Poller(RecordingHandlers(store), Answering(), assignment(devices), interval=0.1, flush_every=0.05)
    task = asyncio.create_task(poller.run())
    try:
        others = set(devices) - {poison}
        await eventually(lambda: poller.stats().dropped >= 1, what="the poisoned entry dropped")
        await eventually(lambda: {d for d, _ in readings(store)} == others, what="the other devices' readings stored")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stats = poller.stats()
    assert poison not in {d for d, _ in readings(store)}
    assert len(readings(store)) + stats.dropped == stats.readings


async def test_a_backlog_is_stored_in_order_with_each_device_once_per_transaction() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 4)
    store.fail_next(OperationalError("the server went away"), OperationalError("the server went away"))
    handlers = RecordingHandlers(store)
    # Polled less often than flushed, so a flush finds the pending readings of at most one cycle.
    poller = Poller(handlers, Answering(), assignment(devices), interval=0.2, flush_every=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        await eventually(lambda: poller.stats().saves >= 5 and poller.stats().pending < 4, what="the backlog stored",
                         within=60)  # fmt: skip
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert poller.stats().save_failures == 2
    stored = readings(store)
    assert len(stored) == len(set(stored)) == poller.stats().readings
    assert max(len(c.results) for c in handlers.commands) > 1
    for command in handlers.commands:
        ids = [r.device_id for r in command.results] + [m.device_id for m in command.offline]
        assert len(ids) == len(set(ids)) and len(ids) <= 100
    for device_id in devices:
        times = [t for d, t in stored if d == device_id]
        assert times == sorted(times)


def test_an_offline_device_is_retried_less_often_but_at_least_every_minute() -> None:
    delays = [retry_delay(missed, interval=10.0, offline_after=3) for missed in range(10)]
    assert delays[:3] == [10.0, 10.0, 10.0]
    assert delays[3:6] == [20.0, 40.0, 60.0]
    assert set(delays[6:]) == {60.0}
    assert retry_delay(50, interval=1.0, offline_after=3) == 6.0
    assert retry_delay(50, interval=300.0, offline_after=3) == 300.0


async def test_readings_are_stamped_by_the_injected_clock() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 2)
    clock = ManualClock(datetime(2031, 3, 4, 5, 6, 7, tzinfo=timezone.utc), step=timedelta(seconds=1))
    poller = Poller(RecordingHandlers(store), Answering(), assignment(devices), interval=0.1, flush_every=0.05,
                    clock=clock)  # fmt: skip
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: len(readings(store)) >= 4, what="two readings of each device stored")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stamps = [at for _, at in readings(store)]
    assert all(datetime(2031, 3, 4, 5, 6, 8, tzinfo=timezone.utc) <= at <= clock.moment for at in stamps)
    assert len(set(stamps)) == len(stamps)


async def test_the_heap_is_frozen_once_every_device_was_polled_refrozen_on_its_clock_and_thawed_at_stop() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 3)
    poller = Poller(RecordingHandlers(store), Answering(), assignment(devices), interval=0.1, flush_every=0.05,
                    freeze_heap_every=0.2)  # fmt: skip
    stop = asyncio.Event()
    dies = Cycle()
    dies.me = dies
    task = asyncio.create_task(poller.run(stop))
    try:
        await eventually(lambda: gc.get_freeze_count() > 0, what="the heap frozen")
        assert poller.stats().polls >= len(devices)
        del dies
        gc.collect()
        assert Cycle.alive == 1, "a frozen cycle is left alone by the collector"
        await eventually(lambda: Cycle.alive == 0, what="the dead frozen cycle collected at the next round")
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0


async def test_a_poller_without_a_heap_clock_never_freezes_the_heap() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 2)
    poller = Poller(RecordingHandlers(store), Answering(), assignment(devices), interval=0.05, flush_every=0.05)
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: poller.stats().polls >= 6, what="a few polls")
        assert gc.get_freeze_count() == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Cycle:
    alive = 0

    def __init__(self) -> None:
        Cycle.alive += 1
        self.me: Cycle | None = None

    def __del__(self) -> None:
        Cycle.alive -= 1


async def test_devices_that_leave_and_join_the_assignment_are_counted_as_given_up_and_taken() -> None:
    store = MemoryStore()
    devices = await save_devices(store, plug(), 3)
    listed = dict(devices)
    poller = Poller(RecordingHandlers(store), Answering(), assignment(listed), interval=0.05, flush_every=0.05)
    task = asyncio.create_task(poller.run())
    try:
        await eventually(lambda: poller.stats().taken == 3, what="three devices taken")
        gone = next(iter(listed))
        del listed[gone]
        await eventually(lambda: poller.stats().devices == 2, what="the unlisted device dropped")
        listed[gone] = devices[gone]
        await eventually(lambda: poller.stats().devices == 3, what="the listed device taken again")
        stats = poller.stats()
        assert (stats.taken, stats.given_up, stats.assignment_failures) == (4, 1, 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert poller.stats().given_up == 1, "a stop is not a hand-over"
