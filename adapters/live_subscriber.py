"""A live subscriber: one client's bounded queue, what it watches, and how it is ended.

`FanOut` (`adapters.fanout`) offers each event to the subscribers that want it; a subscriber whose
queue is full is ended with `TOO_SLOW`, one whose client left with `STOPPED`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol
from uuid import UUID

import structlog

from adapters.contract import Envelope
from adapters.errors import AdapterError
from adapters.live_events import DEVICE_AGGREGATES, LiveEvent


class SubscriberIndex(Protocol):
    """What a subscriber asks of the fan-out that made it (`adapters.fanout.FanOut`): to be found by
    device, by every event, and to be forgotten; and a count of the subscribers ended as too slow."""

    dropped: int
    _broad: set[Subscriber]

    def _index(self, subscriber: Subscriber, device_id: UUID) -> None: ...

    def _unindex(self, subscriber: Subscriber, device_id: UUID) -> None: ...

    def _remove(self, subscriber: Subscriber) -> None: ...

log = structlog.get_logger("adapters.fanout")


class Ended(AdapterError):
    """The subscriber was ended: `code` names why (`TOO_SLOW`, `CREDENTIALS_ENDED`, `STOPPED`...)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


TOO_SLOW = "TOO_SLOW"
STOPPED = "STOPPED"


class Subscriber:
    """One client's bounded queue and what it watches: some devices, every device, or every event.

    Items are `LiveEvent`s from the stream and `bytes` the client's own handler queued (replies,
    current state). `identity` holds the identity events seen about this client's session, key
    or user since its handler last looked; `recheck` is set when one arrives.
    """

    def __init__(self, fanout: SubscriberIndex, *, queue_size: int, principal_ids: Iterable[UUID] = ()) -> None:
        self._fanout = fanout
        self.queue: asyncio.Queue[LiveEvent | bytes] = asyncio.Queue(maxsize=queue_size)
        self.devices: set[UUID] = set()
        self.all_devices = False
        self.all_events = False
        self.principal_ids = frozenset(principal_ids)
        self.identity: list[Envelope[dict[str, Any]]] = []
        self.recheck = asyncio.Event()
        self.ended: Ended | None = None
        self._end_signal = asyncio.Event()
        self._held: dict[UUID, list[LiveEvent]] = {}
        self._held_all: list[LiveEvent] | None = None

    def wants(self, event: LiveEvent) -> bool:
        """Whether `event` is one this subscriber watches."""
        if self.all_events:
            return True
        if event.envelope.aggregate not in DEVICE_AGGREGATES or event.device_id is None:
            return False
        return self.all_devices or event.device_id in self.devices

    def watch(self, device_id: UUID, *, hold: bool = False) -> None:
        """Watch one device; with `hold`, its events wait until `release` (to send its current state first)."""
        if hold:
            self._held.setdefault(device_id, [])
        self.devices.add(device_id)
        self._fanout._index(self, device_id)

    def release(self, device_id: UUID, first: Iterable[bytes] = ()) -> None:
        """Queue `first` (the device's current state), then the device's events held since `watch`."""
        items: list[LiveEvent | bytes] = [*first, *self._held.pop(device_id, [])]
        for item in items:
            if not self.offer(item):
                return

    def unwatch(self, device_id: UUID) -> None:
        self.devices.discard(device_id)
        self._held.pop(device_id, None)
        self._fanout._unindex(self, device_id)

    def watch_all(self, *, events: bool = False, hold: bool = False) -> None:
        """Watch every device (or, with `events`, every event of the stream); `hold` as for `watch`."""
        if hold:
            self._held_all = []
        self.all_devices = True
        self.all_events = self.all_events or events
        if self.ended is None:
            self._fanout._broad.add(self)

    def release_all(self, first: Iterable[bytes] = ()) -> None:
        """Queue `first` (every device's current state), then the events held since `watch_all`."""
        items: list[LiveEvent | bytes] = [*first, *(self._held_all or [])]
        self._held_all = None
        for item in items:
            if not self.offer(item):
                return

    def offer(self, item: LiveEvent | bytes) -> bool:
        """Queue an item without waiting. A full queue ends the subscriber (`TOO_SLOW`): returns False."""
        if self.ended is not None:
            return False
        if isinstance(item, LiveEvent):
            if self._held_all is not None:
                self._held_all.append(item)
                return True
            if item.device_id in self._held:
                self._held[item.device_id].append(item)
                return True
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._fanout.dropped += 1
            log.info("live.client_dropped", reason="queue full", queue_size=self.queue.maxsize)
            self.end(TOO_SLOW, f"too slow: {self.queue.maxsize} messages unread")
            return False
        return True

    def notice(self, envelope: Envelope[dict[str, Any]]) -> None:
        """An identity event about this subscriber's session, key or user."""
        self.identity.append(envelope)
        self.recheck.set()

    def end(self, code: str, reason: str) -> None:
        """Stop delivering to this subscriber (idempotent); `next()` raises Ended from then on."""
        if self.ended is not None:
            return
        self.ended = Ended(code, reason)
        self._end_signal.set()
        self._fanout._remove(self)

    async def next(self, timeout: float | None = None) -> LiveEvent | bytes | None:
        """The next item, or None after `timeout` seconds without one.

        Raises Ended once the subscriber was ended (items still queued are dropped then).
        """
        if self.ended is not None:
            raise self.ended
        if not self.queue.empty():
            return self.queue.get_nowait()
        getter = asyncio.ensure_future(self.queue.get())
        ender = asyncio.ensure_future(self._end_signal.wait())
        try:
            await asyncio.wait((getter, ender), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ender.cancel()
            if not getter.done():
                getter.cancel()
        if self.ended is not None:
            raise self.ended
        return getter.result() if getter.done() and not getter.cancelled() else None

    def close(self) -> None:
        """The client left: stop delivering to it."""
        self.end(STOPPED, "the client left")
