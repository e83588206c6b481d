"""The live fan-out: one JetStream consumer per API process, delivering to that process's clients.

The fan-out follows the events stream from the moment it starts with an ordered, ephemeral
push consumer (nats-py recreates it from the last stream sequence it saw after a gap, a
missed heartbeat or a reconnect, so an outage loses nothing). Each message is decoded once
into a `LiveEvent` and offered to the subscribers that want it: those watching its device,
those watching every device, and those watching every event. Identity events that may end a
subscriber's credentials (a session ended, a key revoked, a user changed) are signalled to
the subscribers of that session, key or user.

A subscriber (`adapters.live_subscriber`) is a bounded queue. Offering never waits: when a subscriber's queue is full it
is ended with `TOO_SLOW` and removed, so one client that does not read never slows the
others nor grows memory. Several API processes each run their own fan-out for their own
clients.

The events are translated once into the shapes of the Kasa Monitor API's WebSocket events
(`device_update`, `device_status`) plus `command_update`, by `seed_message` (`adapters.live_events`,
which also holds `LiveEvent`); the device's address comes from a directory loaded at start and
kept current from `device.Added` events.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from adapters.bus import StreamConfig
from adapters.contract import Envelope, decode_envelope
from adapters.faults import DATABASE_FAULTS, report
from adapters.live_events import (
    COMMAND_EVENTS,
    DEVICE_AGGREGATES,
    IDENTITY_AGGREGATES,
    DeviceEntry,
    LiveEvent,
    device_of,
    seed_message,
)
from adapters.live_subscriber import STOPPED, TOO_SLOW, Ended, Subscriber

__all__ = [
    "COMMAND_EVENTS", "DEVICE_AGGREGATES", "IDENTITY_AGGREGATES", "STOPPED", "TOO_SLOW", "DeviceEntry", "Ended",
    "FanOut", "FanOutStatus", "LiveEvent", "LiveOptions", "Subscriber", "device_of", "seed_message",
]

log = structlog.get_logger(__name__)

_SEEN = 10_000
_DIRECTORY_EVENTS = ("Added", "Renamed")
"""Device events that change the directory of addresses and aliases."""


class _Head(msgspec.Struct, frozen=True):
    """The fields of an envelope the fan-out keeps for itself (`Envelope` without its data)."""

    notification_id: int
    aggregate: str
    event: str
    timestamp: datetime


_HEAD = msgspec.json.Decoder(_Head)


class LiveOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Knobs of live delivery: the queue bound per client, SSE heartbeats, auth deadlines, re-checks."""

    queue_size: int = 256
    heartbeat: float = 15.0
    auth_timeout: float = 5.0
    recheck: float = 30.0


class FanOutStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What `/api/health` shows: whether the fan-out follows the stream, how far behind, for whom."""

    running: bool
    connected: bool
    subscribers: int
    position: int
    pending: int | None
    delivered: int
    dropped_clients: int
    last_event_at: datetime | None


DirectoryLoader = Callable[[], Awaitable[Mapping[UUID, DeviceEntry]]]


class FanOut:
    """Follows `<prefix>.events.>` from now on and offers each event to this process's subscribers.

    `start()` creates the consumer and loads the device directory (after subscribing, so no
    device added in between is missed); `stop()` ends every subscriber with `STOPPED`.
    A message that is not a contract envelope is logged and skipped; an event seen already
    (JetStream redelivery, a relay re-publishing) is skipped by its `notification_id`.
    """

    def __init__(
        self, nc: Client, js: JetStreamContext, stream: StreamConfig, *, directory: DirectoryLoader,
        options: LiveOptions | None = None,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.js = js
        self.stream = stream
        self.options = options or LiveOptions()
        self._load_directory = directory
        self.directory: dict[UUID, DeviceEntry] = {}
        self._sub: JetStreamContext.PushSubscription | None = None
        self._by_device: dict[UUID, set[Subscriber]] = {}
        self._broad: set[Subscriber] = set()
        self._by_principal: dict[UUID, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.position = 0
        self.delivered = 0
        self.dropped = 0
        self.last_event_at: datetime | None = None
        self.last_event_monotonic: float | None = None
        self._reloading: asyncio.Future[None] | None = None
        self._reloaded_at = 0.0

    @property
    def running(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        """Subscribe from now on (new messages only), then load the directory. Raises nats errors."""
        if self._sub is not None:
            return
        self._sub = await self.js.subscribe(
            f"{self.stream.subject_prefix}.events.>",
            stream=self.stream.name,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            idle_heartbeat=5.0,
            pending_msgs_limit=100_000,
        )
        try:
            loaded = await self._load_directory()
        except DATABASE_FAULTS as exc:  # the directory fills from the stream as well
            report("live", exc, action="load directory")
            loaded = {}
        self.directory = {**loaded, **self.directory}
        log.info("live.fanout_started", stream=self.stream.name, devices=len(self.directory))

    async def stop(self) -> None:
        """Unsubscribe and end every subscriber with `STOPPED`."""
        sub, self._sub = self._sub, None
        for subscriber in list(self._subscribers):
            subscriber.end(STOPPED, "the server is stopping")
        if sub is not None:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:  # a closed connection has no subscription left to end
                log.debug("live.unsubscribe_failed", error=repr(exc))

    def subscribe(self, *, principal_ids: Iterable[UUID] = (), queue_size: int | None = None) -> Subscriber:
        """A new subscriber watching nothing yet; identity events naming `principal_ids` reach it."""
        subscriber = Subscriber(self, queue_size=queue_size or self.options.queue_size, principal_ids=principal_ids)
        self._subscribers.add(subscriber)
        for pid in subscriber.principal_ids:
            self._by_principal.setdefault(pid, set()).add(subscriber)
        return subscriber

    def address_of(self, device_id: UUID) -> str | None:
        entry = self.directory.get(device_id)
        return entry.address if entry else None

    async def status(self) -> FanOutStatus:
        """The fan-out's state; `pending` asks the server (1 s at most) and is None when it cannot."""
        pending: int | None = None
        if self._sub is not None and self.nc.is_connected:
            try:
                info = await asyncio.wait_for(self._sub.consumer_info(), timeout=1.0)
                pending = int(info.num_pending or 0) + self._sub.pending_msgs
            except (nats.errors.Error, asyncio.TimeoutError):  # reported as unknown
                pending = None
        return FanOutStatus(
            running=self.running,
            connected=self.nc.is_connected,
            subscribers=len(self._subscribers),
            position=self.position,
            pending=pending,
            delivered=self.delivered,
            dropped_clients=self.dropped,
            last_event_at=self.last_event_at,
        )

    async def _on_message(self, msg: Msg) -> None:
        raw = msg.data
        try:
            if not self._subscribers:
                # Nobody to offer it to: only what the fan-out itself keeps is read (its data is not).
                head = _HEAD.decode(raw)
                if not (head.aggregate == "device" and head.event in _DIRECTORY_EVENTS):
                    self._first_sight(head.notification_id, head.timestamp)
                    return
            envelope = decode_envelope(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("live.message_skipped", subject=msg.subject, error=str(exc)[:200])
            return
        self.dispatch(envelope, raw)

    def _first_sight(self, nid: int, timestamp: datetime) -> bool:
        """Note an event as delivered; False if it was seen already (then it is skipped)."""
        if nid in self._seen:
            return False
        self._seen[nid] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        self.position = max(self.position, nid)
        self.delivered += 1
        self.last_event_at = timestamp
        self.last_event_monotonic = time.monotonic()
        return True

    def dispatch(self, envelope: Envelope[dict[str, Any]], raw: bytes) -> None:
        """Offer one event to the subscribers that want it (never waits for any of them)."""
        if not self._first_sight(envelope.notification_id, envelope.timestamp):
            return
        if envelope.aggregate == "device" and envelope.event in _DIRECTORY_EVENTS:
            self._learn(envelope)
        if envelope.aggregate in IDENTITY_AGGREGATES:
            for subscriber in list(self._by_principal.get(envelope.originator_id, ())):
                subscriber.notice(envelope)
        event = LiveEvent(envelope, raw)
        if event.device_id is not None:
            event.address = self.address_of(event.device_id)
            if event.address is None:
                self._reload_soon()
        targets = set(self._broad)
        if event.device_id is not None:
            targets.update(self._by_device.get(event.device_id, ()))
        for subscriber in targets:
            if subscriber.wants(event):
                subscriber.offer(event)

    def _reload_soon(self) -> None:
        """Reload the directory in the background (at most once a second) after meeting an unknown device."""
        now = time.monotonic()
        if self._reloading is not None or now - self._reloaded_at < 1.0:
            return
        self._reloaded_at = now

        async def reload() -> None:
            try:
                self.directory = {**(await self._load_directory()), **self.directory}
            except DATABASE_FAULTS as exc:  # tried again at the next unknown device
                report("live", exc, action="load directory")
            except Exception:
                log.exception("live.directory_not_loaded")
            finally:
                self._reloading = None

        self._reloading = asyncio.ensure_future(reload())

    def _learn(self, envelope: Envelope[dict[str, Any]]) -> None:
        data = envelope.data
        known = self.directory.get(envelope.originator_id)
        address = str(data.get("address") or (known.address if known else envelope.originator_id))
        alias = str(data.get("alias") or (known.alias if known else ""))
        self.directory[envelope.originator_id] = DeviceEntry(address=address, alias=alias)

    def _index(self, subscriber: Subscriber, device_id: UUID) -> None:
        if subscriber.ended is None:
            self._by_device.setdefault(device_id, set()).add(subscriber)

    def _unindex(self, subscriber: Subscriber, device_id: UUID) -> None:
        watchers = self._by_device.get(device_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_device[device_id]

    def _remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self._broad.discard(subscriber)
        for device_id in list(subscriber.devices):
            self._unindex(subscriber, device_id)
        for pid in subscriber.principal_ids:
            watchers = self._by_principal.get(pid)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._by_principal[pid]
