"""Seeding event histories through the real command handlers, from sync or async tests.

The handlers run on a private event loop in a worker thread, so these helpers can be
called from plain functions and from inside a running test loop alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from adapters.eventstore import StoreUnitOfWork, WattLedger
from domain.address import DeviceAddress
from domain.commands import AddDevice, MissedPolls, PollResult, RecordPolls
from domain.errors import DeviceUnreachable
from domain.handlers import CommandHandlers
from domain.ports import Clock, DeviceDriver
from domain.readings import DeviceSnapshot

T = TypeVar("T")


class StaticDriver(DeviceDriver):
    """A driver whose every device answers with one fixed snapshot."""

    def __init__(self, snapshot: DeviceSnapshot, found: Iterable[DeviceAddress] = ()) -> None:
        self.snapshot = snapshot
        self.found = list(found)
        self.polled: list[DeviceAddress] = []

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        self.polled.append(address)
        return self.snapshot

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return list(self.found)


class NoDevices(DeviceDriver):
    """A driver for which no device ever answers."""

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot:
        raise DeviceUnreachable(f"{address}: no devices here")

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]:
        return []


class FixedClock(Clock):
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def seed_device(
    app: WattLedger,
    address: str | DeviceAddress,
    snapshot: DeviceSnapshot,
    *,
    measured_at: datetime,
    alias: str | None = None,
    actor: str = "test",
) -> UUID:
    """Store an added device with its first reading; returns the device id."""
    handlers = CommandHandlers(StoreUnitOfWork(app), StaticDriver(snapshot), FixedClock(measured_at))
    added = run_sync(handlers.add_device(AddDevice(address=str(address), alias=alias, actor=actor)))
    return added.device_id


def seed_polls(
    app: WattLedger,
    results: Iterable[PollResult],
    offline: Mapping[UUID, int] | None = None,
    *,
    actor: str = "test",
) -> int:
    """Store poll results (and missed polls) as the poller would; returns readings recorded."""
    command = RecordPolls(
        results=tuple(results),
        offline=tuple(MissedPolls(device_id=d, count=n) for d, n in (offline or {}).items()),
        actor=actor,
    )
    handlers = CommandHandlers(StoreUnitOfWork(app), NoDevices(), FixedClock(datetime.min))
    return run_sync(handlers.record_polls(command)).recorded
