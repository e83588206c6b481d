"""When each device is polled, and the concurrency slots its polls take.

Every device has a clock of its own: a phase within the interval set by its id
(`first_due`), the same in every process, so a device handed to another poller keeps its
rhythm. A device that misses polls is retried later and later (`retry_delay`). A poll holds
a `Slot` of a concurrency bound, which a slow poll can hand back early.
"""

from __future__ import annotations

import asyncio
import math
import time
from uuid import UUID

from domain.address import DeviceAddress

__all__ = ["OFFLINE_RETRY_CAP", "DeviceState", "Slot", "first_due", "retry_delay"]

OFFLINE_RETRY_CAP = 60.0
"""An offline device is retried at least this often (or every interval, if longer)."""


def retry_delay(missed: int, *, interval: float, offline_after: int) -> float:
    """Seconds until a device that missed `missed` polls in a row is polled again.

    The interval until it is reported offline; then doubling, capped at six intervals
    and at OFFLINE_RETRY_CAP (or one interval, if that is longer).
    """
    beyond = missed - offline_after
    if beyond < 0:
        return interval
    cap = max(interval, min(OFFLINE_RETRY_CAP, 6 * interval))
    return min(interval * 2.0 ** min(beyond + 1, 16), cap)


def first_due(device_id: UUID, interval: float) -> float:
    """The next moment on the device's own clock (event loop time): a phase from its id, on wall-clock time.

    The phase is the same in every process, so a device handed to another poller
    keeps its rhythm.
    """
    phase = (device_id.int % 1_000_003) / 1_000_003 * interval
    wall = time.time()
    due = phase + math.ceil((wall - phase) / interval) * interval
    return asyncio.get_running_loop().time() + (due - wall)


class DeviceState:
    """One polled device: where it is, when it is due, how many polls it missed, its polling task."""

    __slots__ = ("_address", "device_id", "due", "failing_since", "missed", "parsed", "polled", "task")

    def __init__(self, device_id: UUID, address: str, due: float) -> None:
        self.device_id = device_id
        self._address = address
        self.parsed: DeviceAddress | None = None
        """`address` parsed, once the first poll parsed it (None again when the address changes)."""
        self.due = due
        self.polled = False
        """Whether a poll of it was begun."""
        self.missed = 0
        self.failing_since: str | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self._address

    @address.setter
    def address(self, address: str) -> None:
        if address != self._address:
            self._address, self.parsed = address, None


class Slot:
    """A concurrency slot that can be handed back early, once."""

    __slots__ = ("_limit", "held")

    def __init__(self, limit: asyncio.Semaphore) -> None:
        self._limit = limit
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._limit.release()
