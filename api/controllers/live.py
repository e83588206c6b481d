"""Live events as Server-Sent Events at `/api/events/stream`, resumable from the event store.

Fed by this process's fan-out (`adapters.fanout`), never by a consumer of its own; credentials
are checked again for as long as the stream lasts (`api.live_clients`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from adapters.contract import decode_envelope, encode_envelope
from adapters.fanout import DEVICE_AGGREGATES, Ended, LiveEvent, Subscriber
from api.controllers.devices import resolve_device
from api.deps import LiveDeps
from api.live_clients import Grant, credential_headers, end_when_refused, principal_ids, token_expiry
from domain.access import Permission, Principal

REPLAY_SECTION = 1000
SSE_RETRY_MS = 5000


def _since(last_event_id: str | None) -> int | None:
    if last_event_id is None:
        return None
    try:
        value = int(last_event_id.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


class LiveController(Controller):
    path = "/api/events"
    tags = ["live"]

    @get("/stream", operation_id="streamEvents", opt={"permission": Permission.DEVICES_VIEW})
    async def stream(
        self,
        request: Request[Any, Any, Any],
        live_deps: NamedDependency[LiveDeps],
        principal: NamedDependency[Principal],
        device: FromQuery[list[str] | None] = None,
        last_event_id: FromQuery[str | None] = None,
    ) -> ServerSentEvent:
        """Server-Sent Events: every event the caller may see, or those of the `device`s given (address or id).

        Each message's `id` is the event's position in the log and its `data` the public envelope.
        With `Last-Event-ID` (header, or `last_event_id`) the events after it are replayed from the
        event store first, then live ones follow without gap or duplicate. `: ping` comments come
        every heartbeat. A process that does not follow the stream replays and ends the response.
        Unknown devices answer 404 `DEVICE_NOT_FOUND`.
        """
        devices = [(await resolve_device(live_deps.reads, key)).device_id for key in (device or [])[:100]]
        since = _since(request.headers.get("last-event-id")) if last_event_id is None else _since(last_event_id)
        headers = credential_headers(request.headers) or {}
        grant = Grant(principal=principal, headers=headers, expires_at=await token_expiry(live_deps, headers))
        return ServerSentEvent(
            _events(live_deps, grant, since, set(devices), principal.can(Permission.AUDIT_VIEW)),
            headers={"X-Accel-Buffering": "no"},
        )


def _visible(event: LiveEvent, devices: set[UUID], audit: bool) -> bool:
    if devices:
        return event.device_id in devices and event.envelope.aggregate in DEVICE_AGGREGATES
    return audit or (event.envelope.aggregate in DEVICE_AGGREGATES and event.device_id is not None)


def _replay_section(deps: LiveDeps, after: int, until: int) -> list[tuple[int, bytes]]:
    """(id, envelope) of the stored events after `after` up to `until`, one section (runs in a thread)."""
    return [(e.id, encode_envelope(e.id, e.event)) for e in deps.reads.log.read(after, REPLAY_SECTION, stop=until)]


async def _replay(deps: LiveDeps, since: int, until: int, devices: set[UUID], audit: bool
                  ) -> AsyncIterator[ServerSentEventMessage]:  # fmt: skip
    after = since
    while after < until:
        section = await asyncio.to_thread(_replay_section, deps, after, until)
        if not section:
            return
        for nid, raw in section:
            if _visible(LiveEvent(decode_envelope(raw), raw), devices, audit):
                yield ServerSentEventMessage(data=raw.decode(), id=nid)
        after = section[-1][0]


def _subscribe(deps: LiveDeps, principal: Principal, devices: set[UUID], audit: bool) -> Subscriber | None:
    """A subscriber for an SSE stream (a deeper queue: it buffers live events during a replay)."""
    fanout = deps.fanout
    if not fanout.running:
        return None
    subscriber = fanout.subscribe(principal_ids=principal_ids(principal), queue_size=max(fanout.options.queue_size, 4096))
    for device_id in devices:
        subscriber.watch(device_id)
    if not devices:
        subscriber.watch_all(events=audit)
    return subscriber


async def _events(
    deps: LiveDeps, grant: Grant, since: int | None, devices: set[UUID], audit: bool
) -> AsyncIterator[ServerSentEventMessage]:
    """Subscribe, replay after `since` up to the log's end as seen then, then live events after that end.

    A replay longer than the subscriber's queue can buffer ends the stream (`: ended: too slow`);
    the client resumes from the last id it got.
    """
    checker: asyncio.Task[None] | None = None
    subscriber = _subscribe(deps, grant.principal, devices, audit)
    try:
        replay_end = 0
        if since is not None:
            replay_end = await deps.reads.newest()
            async for message in _replay(deps, since, replay_end, devices, audit):
                yield message
        if subscriber is None:
            yield ServerSentEventMessage(data=None, comment="this process does not follow the stream",
                                         retry=SSE_RETRY_MS)  # fmt: skip
            return
        heartbeat = deps.fanout.options.heartbeat
        if grant.headers:
            checker = asyncio.create_task(end_when_refused(deps, grant, subscriber, "sse"))
        yield ServerSentEventMessage(data=None, comment="live", retry=SSE_RETRY_MS)
        async for message in _live(subscriber, replay_end, heartbeat):
            yield message
    finally:
        if checker is not None:
            checker.cancel()
        if subscriber is not None:
            subscriber.close()


async def _live(subscriber: Subscriber, replay_end: int, heartbeat: float) -> AsyncIterator[ServerSentEventMessage]:
    """Live events with ids after `replay_end`, each once; a `: ping` comment after `heartbeat` s of quiet."""
    sent: set[int] = set()
    while True:
        try:
            item = await subscriber.next(timeout=heartbeat)
        except Ended as ended:
            yield ServerSentEventMessage(data=None, comment=f"ended: {ended.reason}")
            return
        if item is None:
            yield ServerSentEventMessage(data=None, comment="ping")
            continue
        if not isinstance(item, LiveEvent):
            continue
        nid = item.notification_id
        if nid <= replay_end or nid in sent:
            continue
        sent.add(nid)
        if len(sent) > 10_000:
            sent = {i for i in sent if i > nid - 5_000}
        yield ServerSentEventMessage(data=item.raw.decode(), id=nid)
