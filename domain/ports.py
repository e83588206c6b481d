"""What the command handlers need from the outside world, as protocols.

Adapters implement these (the eventsourcing store, the python-kasa driver, the
system clock); tests subclass them with fakes. Nothing here does I/O.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.address import DeviceAddress
from domain.device import Device
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot


class EventStore(Protocol):
    """Loads aggregates and stores the new events of several aggregates in one transaction.

    `save` raises `ConcurrencyConflict` when another writer stored a version first;
    an implementation that keeps aggregates between calls forgets every aggregate
    of a failed save, so the next load reads the store again.
    """

    async def device(self, device_id: UUID) -> Device | None: ...

    async def meter_day(self, device_id: UUID, day: date) -> MeterDay | None: ...

    async def save(self, *aggregates: Aggregate) -> int:
        """Store every pending event; returns the notification id of the last one (0: none)."""
        ...


class DeviceDriver(Protocol):
    """Talks to devices. Failures raise the domain's `DeviceError` subclasses."""

    async def poll(self, address: DeviceAddress) -> DeviceSnapshot: ...

    async def discover(self, target: str, *, port: int | None = None) -> list[DeviceAddress]: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...
