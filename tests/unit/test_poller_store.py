"""The poller's store queue and retry schedule over fake ports: no sockets, no database."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timezone
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import OperationalError

from adapters.poller import AllDevices, Poller, retry_delay
from domain.address import DeviceAddress
from domain.commands import PollsRecorded, RecordPolls
from domain.device import Device
from domain.handlers import CommandHandlers
from domain.meter import MeterDay, meter_day_id
from domain.ports import Clock, DeviceDriver, EventStore
from domain.readings import DeviceSnapshot


def plug() -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True,
        has_emeter=True, power_w=5.0, total_wh=time.time() / 3600,
    )


class MemoryStore(EventStore):
    """Committed events per aggregate; `reject` makes every save touching that device raise `error`."""

    def __init__(self) -> None:
        self.events: dict[UUID, list[Aggregate.Event]] = {}
        self.reject: UUID | None = None
        self.failures_left = 0

    def _load(self, aggregate_id: UUID) -> Aggregate | None:
        aggregate: Aggregate | None = None
        for event in self.events.get(aggregate_id, []):
            aggregate = event.mutate(aggregate)
        return aggregate

    async def device(self, device_id: UUID) -> Device | None:
        loaded = self._load(device_id)
        assert loaded is None or isinstance(loaded, Device)
        return loaded

    async def meter_day(self, device_id: UUID, day: date) -> MeterDay | None:
        loaded = self._load(meter_day_id(device_id, day))
        assert loaded is None or isinstance(loaded, MeterDay)
        return loaded

    async def save(self, *aggregates: Aggregate) -> int:
        if self.failures_left:
            self.failures_left -= 1
            raise OperationalError("the server went away")
        if self.reject is not None and any(getattr(a, "device_id", a.id) == self.reject for a in aggregates):
            raise TypeError("an aggregate the store cannot encode")
        for aggregate in aggregates:
            self.events.setdefault(aggregate.id, []).extend(copy.deepcopy(aggregate.collect_events()))
        return sum(len(e) for e in self.events.values())

    def readings(self) -> list[tuple[UUID, datetime]]:
        return [
            (e.device_id, e.measured_at)
            for events in self.events.values() for e in events if isinstance(e, MeterDay.ReadingRecorded)
        ]


class Answering(DeviceDriver):
    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        await asyncio.sleep(0)
        return plug()

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


class UtcClock(Clock):
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class RecordingHandlers(CommandHandlers):
    """The real handlers, keeping every RecordPolls they were given."""

    def __init__(self, store: EventStore) -> None:
        super().__init__(store, Answering(), UtcClock())
        self.commands: list[RecordPolls] = []

    async def record_polls(self, command: RecordPolls) -> PollsRecorded:
        self.commands.append(command)
        return await super().record_polls(command)


async def seeded(store: MemoryStore, count: int) -> dict[UUID, str]:
    devices = {}
    for i in range(count):
        device = Device.from_snapshot(f"127.0.0.1:{30000 + i}", plug(), alias=None, actor="test")
        await store.save(device)
        devices[device.id] = device.address
    return devices


def assignment(devices: dict[UUID, str]) -> AllDevices:
    async def listing() -> list[tuple[UUID, str]]:
        return list(devices.items())

    return AllDevices(listing, refresh_every=0.5)


async def until(check: Callable[[], bool] | Callable[[], Awaitable[bool]], *, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def test_an_entry_the_store_always_rejects_is_dropped_and_the_others_are_stored() -> None:
    store = MemoryStore()
    devices = await seeded(store, 6)
    poison = next(iter(devices))
    store.reject = poison
    poller = Poller(RecordingHandlers(store), Answering(), assignment(devices), interval=0.1, flush_every=0.05)
    task = asyncio.create_task(poller.run())
    try:
        others = set(devices) - {poison}
        assert await until(lambda: poller.stats().dropped >= 1)
        assert await until(lambda: {d for d, _ in store.readings()} == others)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stats = poller.stats()
    assert poison not in {d for d, _ in store.readings()}
    assert len(store.readings()) + stats.dropped == stats.readings


async def test_a_backlog_is_stored_in_order_with_each_device_once_per_transaction() -> None:
    store = MemoryStore()
    devices = await seeded(store, 4)
    store.failures_left = 2
    handlers = RecordingHandlers(store)
    poller = Poller(handlers, Answering(), assignment(devices), interval=0.05, flush_every=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        assert await until(lambda: poller.stats().saves >= 5 and poller.stats().pending < 4)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert poller.stats().save_failures == 2
    stored = store.readings()
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
