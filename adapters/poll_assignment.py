"""Which devices a poller polls: its `Assignment`, and `AllDevices` for a poller that runs alone.

Several pollers that share the devices take them from `adapters.leases.Leases` instead.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol
from uuid import UUID

import msgspec

__all__ = ["AllDevices", "Assigned", "Assignment", "DeviceList"]

DeviceList = Callable[[], Awaitable[Sequence[tuple[UUID, str]]]]


class Assigned(msgspec.Struct, frozen=True, kw_only=True):
    """The devices a poller may poll (id → address) until `valid_until` (event loop time)."""

    devices: dict[UUID, str]
    valid_until: float = math.inf


class Assignment(Protocol):
    """Where a poller learns which devices are its own."""

    refresh_every: float

    async def refresh(self, release: Callable[[Collection[UUID]], Awaitable[None]]) -> Assigned:
        """The devices to poll now; `release` is awaited before any device is given to another poller."""
        ...

    async def leave(self) -> None:
        """Give up every device (clean stop)."""
        ...


class AllDevices(Assignment):
    """Every present device, for a poller that runs alone."""

    def __init__(self, devices: DeviceList, *, refresh_every: float = 10.0) -> None:
        self._devices = devices
        self.refresh_every = refresh_every

    async def refresh(self, release: Callable[[Collection[UUID]], Awaitable[None]]) -> Assigned:
        return Assigned(devices=dict(await self._devices()))

    async def leave(self) -> None:
        return None
