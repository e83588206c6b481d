"""The command handlers: every use case of the write side, over ports only.

Each entry point builds a `CommandHandlers` with its own adapters and calls the
same methods. A handler decides with the aggregates, stores their events in one
`save` under the conflict-retry policy of `domain.retry`: a `ConcurrencyConflict`
reloads and decides again once; a second conflict reaches the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import date, datetime
from functools import partial
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.address import DeviceAddress, parse_address
from domain.commands import (
    AddDevice,
    Command,
    DeviceAdded,
    Discovered,
    DiscoverDevices,
    MissedPolls,
    PollResult,
    PollsRecorded,
    RecordPolls,
    RemoveDevice,
    RenameDevice,
    Stored,
)
from domain.device import Device, device_id_for
from domain.errors import (
    DeviceAlreadyExists,
    DeviceError,
    DeviceNotFound,
    InvalidRequest,
    NoKasaDevice,
)
from domain.meter import MeterDay, utc_day
from domain.ports import Clock, DeviceDriver, EventStore
from domain.push import PushMonitor, push_monitor_id
from domain.readings import DeviceSnapshot
from domain.retry import retrying
from domain.text import check_optional_text, check_text

POLLS_PER_SAVE = 100
"""Devices per transaction when storing polls: one huge pipelined save was seen to hang its connection."""

DISCOVERY_CONCURRENCY = 16


class CommandHandlers:
    """The write side of WattLedger: one method per command, `handle` for any of them."""

    def __init__(self, store: EventStore, driver: DeviceDriver, clock: Clock) -> None:
        self.store = store
        self.driver = driver
        self.clock = clock

    async def handle(self, command: Command) -> DeviceAdded | Stored | PollsRecorded | Discovered:
        match command:
            case AddDevice():
                return await self.add_device(command)
            case RemoveDevice():
                return await self.remove_device(command)
            case RenameDevice():
                return await self.rename_device(command)
            case DiscoverDevices():
                return await self.discover_devices(command)
            case RecordPolls():
                return await self.record_polls(command)
        raise InvalidRequest(f"unknown command {type(command).__name__}")

    async def add_device(self, command: AddDevice) -> DeviceAdded:
        """Contact the device first; nothing is stored unless it answers.

        Raises InvalidAddress, InvalidText (the alias), DeviceAlreadyExists (also when
        another writer added it meanwhile), and NoKasaDevice for any failure to reach a Kasa device there (its `reason`
        says which, for the log only).
        """
        check_optional_text(command.alias, field="alias")
        address = parse_address(command.address)
        await self._check_absent(address)
        try:
            snapshot = await self.driver.poll(address)
        except DeviceError as exc:
            raise NoKasaDevice(f"{type(exc).__name__}: {exc}"[:500]) from exc
        return await self._add_polled(address, snapshot, alias=command.alias, actor=command.actor)

    async def _check_absent(self, address: DeviceAddress) -> None:
        device = await self.store.device(device_id_for(str(address)))
        if device is not None and not device.removed:
            raise DeviceAlreadyExists(f"device {address} is already added")

    async def _add_polled(
        self, address: DeviceAddress, snapshot: DeviceSnapshot, *, alias: str | None, actor: str
    ) -> DeviceAdded:
        canonical = str(address)
        device_id = device_id_for(canonical)
        measured_at = self.clock.now()

        async def attempt() -> DeviceAdded:
            device = await self.store.device(device_id)
            if device is None:
                device = Device.from_snapshot(canonical, snapshot, alias=alias, actor=actor)
            elif not device.removed:
                raise DeviceAlreadyExists(f"device {canonical} is already added")
            else:
                device.restore(snapshot, alias=alias, actor=actor)
            meter = await self._meter(device_id, measured_at)
            meter.record(measured_at, snapshot, actor=actor)
            position = await self.store.save(device, meter)
            return DeviceAdded(device_id=device_id, address=canonical, position=position)

        return await retrying(attempt)

    async def remove_device(self, command: RemoveDevice) -> Stored:
        """Remove a present device; its history stays. Raises DeviceNotFound / DeviceRemoved."""
        return await self._change_device(command.device_id, lambda d: d.remove(actor=command.actor))

    async def rename_device(self, command: RenameDevice) -> Stored:
        """Raises InvalidText (the alias), DeviceNotFound / DeviceRemoved."""
        check_text(command.alias, field="alias")
        return await self._change_device(
            command.device_id, lambda d: d.rename(command.alias, actor=command.actor)
        )

    async def _change_device(self, device_id: UUID, change: Callable[[Device], None]) -> Stored:
        async def attempt() -> Stored:
            device = await self.store.device(device_id)
            if device is None:
                raise DeviceNotFound(f"no device with id {device_id}")
            change(device)
            return Stored(position=await self.store.save(device))

        return await retrying(attempt)

    async def discover_devices(self, command: DiscoverDevices) -> Discovered:
        """Discover, then contact the devices found concurrently (bounded) and add the new ones."""
        found = await self.driver.discover(command.target, port=command.port)
        limit = asyncio.Semaphore(DISCOVERY_CONCURRENCY)
        added: list[str] = []
        known: list[str] = []
        unreachable: list[str] = []
        positions = [0]

        async def one(address: DeviceAddress) -> None:
            async with limit:
                try:
                    await self._check_absent(address)
                    snapshot = await self.driver.poll(address)
                    result = await self._add_polled(address, snapshot, alias=None, actor=command.actor)
                except DeviceAlreadyExists:
                    known.append(str(address))
                except DeviceError:
                    unreachable.append(str(address))
                else:
                    added.append(str(address))
                    positions.append(result.position)

        await asyncio.gather(*(one(a) for a in found))
        return Discovered(
            discovered=len(found),
            added=sorted(added),
            already_known=sorted(known),
            unreachable=sorted(unreachable),
            position=max(positions),
        )

    async def record_polls(self, command: RecordPolls) -> PollsRecorded:
        """Store a poller's results in parts of POLLS_PER_SAVE devices, each part one transaction.

        A device's events always share a transaction. A reading whose device and
        timestamp are already stored records nothing, so a retried part never
        stores a reading twice. Unknown and removed devices are skipped, and so are missed
        polls of a push device: its silence is judged by its pushes (`domain.push_handlers`).
        """
        results, offline = command.results, command.offline
        recorded = position = 0
        for start in range(0, max(len(results), len(offline)), POLLS_PER_SAVE):
            part = results[start : start + POLLS_PER_SAVE]
            missed = offline[start : start + POLLS_PER_SAVE]
            count, last = await retrying(partial(self._record_part, part, missed, actor=command.actor))
            recorded += count
            position = max(position, last)
        return PollsRecorded(recorded=recorded, position=position)

    async def _record_part(
        self, results: Sequence[PollResult], offline: Sequence[MissedPolls], *, actor: str
    ) -> tuple[int, int]:
        """Decide one part; a device (or meter day) met twice in the part is loaded once, so several
        readings of one device in one call become successive events of the same aggregates."""
        devices: dict[UUID, Device | None] = {}
        meters: dict[tuple[UUID, date], MeterDay] = {}
        changed: dict[UUID, Aggregate] = {}
        recorded = 0

        async def device_of(device_id: UUID) -> Device | None:
            if device_id not in devices:
                devices[device_id] = await self.store.device(device_id)
            return devices[device_id]

        for result in results:
            device = await device_of(result.device_id)
            if device is None or device.removed:
                continue
            device.came_online(actor=actor)
            device.observe_relays(result.snapshot, actor=actor)
            key = (result.device_id, utc_day(result.measured_at))
            if key not in meters:
                meters[key] = await self._meter(result.device_id, result.measured_at)
            meter = meters[key]
            if meter.needs_history(result.measured_at):
                meter.recall(await self.store.recorded_times(meter.id))
            recorded += meter.record(result.measured_at, result.snapshot, actor=actor)
            changed.setdefault(device.id, device)
            changed.setdefault(meter.id, meter)
        for missed in offline:
            device = await device_of(missed.device_id)
            if device is None or await self.store.aggregate(push_monitor_id(device.id), PushMonitor) is not None:
                continue
            device.went_offline(missed.count, actor=actor)
            changed.setdefault(device.id, device)
        if not changed:
            return 0, 0
        return recorded, await self.store.save(*changed.values())

    async def _meter(self, device_id: UUID, measured_at: datetime) -> MeterDay:
        day = utc_day(measured_at)
        meter = await self.store.meter_day(device_id, day)
        return meter if meter is not None else MeterDay(device_id=device_id, day=day.isoformat())
