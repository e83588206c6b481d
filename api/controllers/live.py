"""Live subscriptions: the WebSocket at `/ws` and the Server-Sent Events stream at `/api/events/stream`.

Both are fed by this process's fan-out (`adapters.fanout`), never by a consumer of their own.
Credentials are checked as for every HTTP route (`authenticate_headers`), then again whenever
an identity event names the client's session, key or user, every `recheck` seconds, and when
the access token expires; a subscription whose credentials no longer hold is ended.

WebSocket close codes (the reason says more):

| code | why |
| --- | --- |
| 4401 | no valid credentials (on the handshake or in the first message) |
| 4403 | the credentials lack `DEVICES_VIEW` |
| 4408 | no `{"event": "auth"}` message within the auth timeout |
| 4001 | the token expired, the session ended, the key was revoked or the user deactivated |
| 4429 | too slow: the client's queue of unread messages was full |
| 1013 | this process does not follow the stream (try again later) |
| 1001 | the server is stopping |
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, get, websocket
from litestar.connection import WebSocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from adapters.contract import decode_envelope, encode_envelope
from adapters.fanout import DEVICE_AGGREGATES, STOPPED, TOO_SLOW, Ended, LiveEvent, Subscriber
from api.controllers.devices import resolve_device
from api.services import Services
from domain.errors import AuthenticationRequired, DomainError, InsufficientPermissions
from domain.access import Permission, Principal
from domain.authentication import API_KEY_HEADER, authenticate_headers
from domain.identity_rules import API_KEY_PREFIX
from projections.devices import DeviceView, list_devices

log = structlog.get_logger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_CREDENTIALS_ENDED = 4001
CLOSE_TOO_SLOW = 4429
CLOSE_UNAVAILABLE = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_TIMEOUT_S = 10.0
RECHECKS_AFTER_IDENTITY_EVENT = 5
"""Seconds, after an identity event names a live client's principal, during which it is checked every second."""
REPLAY_SECTION = 1000
SSE_RETRY_MS = 5000

_ENCODER = msgspec.json.Encoder()


class Grant(msgspec.Struct, kw_only=True):
    """Credentials that were accepted: the principal, the headers to check them again, the token's expiry."""

    principal: Principal
    headers: dict[str, str]
    expires_at: datetime | None


class Refusal(Exception):
    """Why a live client is refused or ended: a WebSocket close code, an error code and a reason."""

    def __init__(self, close_code: int, error_code: str, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.error_code = error_code
        self.reason = reason


def token_headers(token: str) -> dict[str, str]:
    """The headers a token stands for: an API key (`wl_...`) as `X-API-Key`, anything else as a Bearer token."""
    token = token.strip()
    if token.startswith(f"{API_KEY_PREFIX}_"):
        return {API_KEY_HEADER: token}
    return {"authorization": f"Bearer {token}"}


def credential_headers(headers: Any) -> dict[str, str] | None:
    """`Authorization` or `X-API-Key` from a request's headers, or None when it sends neither."""
    found = {name: headers[name] for name in ("authorization", API_KEY_HEADER) if headers.get(name) is not None}
    return found or None


async def token_expiry(services: Services, headers: dict[str, str]) -> datetime | None:
    """When the Bearer token among `headers` expires (None for an API key, or a token that does not verify)."""
    authorization = headers.get("authorization")
    if authorization is None:
        return None
    try:
        return (await services.tokens.verify_access(authorization.partition(" ")[2].strip())).expires_at
    except DomainError:
        return None


async def authenticate(services: Services, headers: dict[str, str]) -> Grant:
    """Check credentials as HTTP routes do, and that they allow `DEVICES_VIEW`.

    Raises Refusal: 4401 for missing or invalid credentials (with their error code), 4403 without
    `DEVICES_VIEW`.
    """
    try:
        principal = await authenticate_headers(headers, services.tokens, services.identity)
        principal.require(Permission.DEVICES_VIEW)
        expires_at = await token_expiry(services, headers)
    except InsufficientPermissions as exc:
        raise Refusal(CLOSE_FORBIDDEN, exc.code, str(exc)) from None
    except DomainError as exc:
        raise Refusal(CLOSE_UNAUTHENTICATED, exc.code, str(exc)) from None
    return Grant(principal=principal, headers=headers, expires_at=expires_at)


def principal_ids(principal: Principal) -> list[UUID]:
    """The ids whose identity events may end this principal's credentials: its user, session or key."""
    return [i for i in (principal.user_id, principal.session_id, principal.key_id) if i is not None]


async def keep_checking(services: Services, grant: Grant, subscriber: Subscriber, every: float) -> Refusal:
    """Return once the grant's credentials no longer hold, or no longer allow what they allowed, with why.

    Asks again every `every` seconds, at the access token's expiry, and whenever an identity event
    names the principal. Such an event is never taken at its word (anyone who can publish on NATS
    could forge one): it only makes the credentials be checked again against the store, every
    second for a few seconds, so a revocation ends the stream within about a second.
    """
    soon = 0
    while True:
        wait = 1.0 if soon > 0 else every
        if grant.expires_at is not None:
            wait = min(wait, max((grant.expires_at - datetime.now(timezone.utc)).total_seconds(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscriber.recheck.wait(), timeout=wait)
        subscriber.recheck.clear()
        seen, subscriber.identity = subscriber.identity, []
        soon = RECHECKS_AFTER_IDENTITY_EVENT if seen else max(soon - 1, 0)
        try:
            principal = (await authenticate(services, grant.headers)).principal
        except Refusal as refusal:
            code = CLOSE_FORBIDDEN if refusal.close_code == CLOSE_FORBIDDEN else CLOSE_CREDENTIALS_ENDED
            return Refusal(code, refusal.error_code, refusal.reason)
        if principal.permissions != grant.principal.permissions:
            return Refusal(CLOSE_CREDENTIALS_ENDED, "PERMISSIONS_CHANGED",
                           "the permissions of these credentials changed; connect again")  # fmt: skip
        grant.principal = principal


def _reply(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message)


def error_message(error_code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"event": "error", "error_code": error_code, "detail": detail, **extra}


def state_messages(view: DeviceView) -> list[dict[str, Any]]:
    """A device's current state, as the `device_status` and `device_update` a client would have seen."""
    head = {"device_ip": view.device_ip, "device_id": str(view.device_id)}
    timestamp = view.last_seen.isoformat().replace("+00:00", "Z") if view.last_seen else None
    data: dict[str, Any] = {
        "is_on": view.is_on, "current_power_w": view.current_power_w, "voltage": view.voltage,
        "current": view.current, "timestamp": timestamp, "alias": view.alias,
        "today_energy_kwh": view.today_energy_kwh, "month_energy_kwh": view.month_energy_kwh,
    }  # fmt: skip
    if view.outlets:
        data["outlets"] = [msgspec.to_builtins(o) for o in view.outlets]
    status = {"event": "device_status", **head, "status": "online" if view.online else "offline", "timestamp": timestamp}
    return [status, {"event": "device_update", **head, "data": data}]


class LiveClient:
    """What a WebSocket and a socket.io client share: subscribing by address or id, and the current state."""

    def __init__(self, services: Services, subscriber: Subscriber) -> None:
        self.services = services
        self.subscriber = subscriber
        self._pending: list[Callable[[], None]] = []

    async def handle(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one client message and queue its reply (then any current state); returns the reply.

        Errors are replies (`{"event": "error", "error_code", "detail"}`), never a close.
        """
        reply = await self._apply(event, body)
        self.subscriber.offer(_reply(reply))
        for release in self._pending:
            release()
        self._pending.clear()
        return reply

    async def _apply(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        key = body.get("device_ip", body.get("device"))
        if event in ("subscribe_device", "unsubscribe_device"):
            if not isinstance(key, str) or not key.strip():
                return error_message("VALIDATION_ERROR", "send the device's address or id as `device_ip`", request=event)
            try:
                view = await resolve_device(self.services, key.strip())
            except DomainError as exc:
                return error_message(exc.code, str(exc), request=event, device_ip=key)
            if event == "subscribe_device":
                self.subscriber.watch(view.device_id, hold=True)
                state = [_reply(m) for m in state_messages(view)]
                self._pending.append(lambda: self.subscriber.release(view.device_id, state))
                return {"event": "subscribed", "device_ip": view.device_ip, "device_id": str(view.device_id)}
            self.subscriber.unwatch(view.device_id)
            return {"event": "unsubscribed", "device_ip": view.device_ip, "device_id": str(view.device_id)}
        if event == "subscribe_all":
            self.subscriber.watch_all(hold=True)
            async with self.services.read_pool.connection() as conn:
                views = await list_devices(conn, self.services.zone)
            states = [_reply(m) for view in views for m in state_messages(view)]
            self._pending.append(lambda: self.subscriber.release_all(states))
            return {"event": "subscribed", "all": True, "devices": len(views)}
        if event == "ping":
            return {"event": "pong"}
        return error_message("UNKNOWN_EVENT", f"unknown event {event!r}", request=event)


def _parse(message: str | bytes | None) -> tuple[str, dict[str, Any]] | None:
    """(event, body) of a client message `{"event": ..., ...}`, or None if it is not one."""
    try:
        body = msgspec.json.decode(message or b"")
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("event"), str):
        return None
    return body["event"], body


async def _receive(socket: WebSocket[Any, Any, Any]) -> str | bytes | None:
    """The next frame's text or bytes; raises WebSocketDisconnect when the client left."""
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(detail="client disconnected", code=message.get("code", 1000))
    data = message.get("text") or message.get("bytes")
    return data if isinstance(data, (str, bytes)) else None


async def _close(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
    """Close with `code`; waits for a client that is not reading at most CLOSE_TIMEOUT_S, then gives up."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(socket.close(code=code, reason=reason[:120]), timeout=CLOSE_TIMEOUT_S)


async def _handshake(socket: WebSocket[Any, Any, Any], services: Services, timeout: float) -> Grant:
    """Credentials from the handshake headers, else from a first `{"event": "auth", "token"}` message.

    Raises Refusal (4401, 4403, or 4408 when no message came within `timeout`) and WebSocketDisconnect.
    """
    headers = credential_headers(socket.headers)
    if headers is None:
        try:
            first = await asyncio.wait_for(_receive(socket), timeout=timeout)
        except TimeoutError:
            raise Refusal(CLOSE_AUTH_TIMEOUT, "AUTHENTICATION_TIMEOUT", f"no auth message within {timeout:g} s") from None
        parsed = _parse(first)
        token = parsed[1].get("token") if parsed and parsed[0] == "auth" else None
        if not isinstance(token, str) or not token.strip():
            required = AuthenticationRequired("send {\"event\": \"auth\", \"token\": ...} first, or credentials on the handshake")
            raise Refusal(CLOSE_UNAUTHENTICATED, required.code, str(required))
        headers = token_headers(token)
    return await authenticate(services, headers)


async def _write(socket: WebSocket[Any, Any, Any], subscriber: Subscriber) -> None:
    """Send the subscriber's queue in order until it is ended (raises Ended)."""
    while True:
        item = await subscriber.next()
        payload = item.seed() if isinstance(item, LiveEvent) else item
        if payload:
            await socket.send_text(payload.decode())


async def _read(socket: WebSocket[Any, Any, Any], client: LiveClient) -> None:
    """Handle client messages until it leaves (raises WebSocketDisconnect)."""
    while True:
        parsed = _parse(await _receive(socket))
        if parsed is None:
            client.subscriber.offer(_reply(error_message(
                "INVALID_MESSAGE", "send JSON objects such as {\"event\": \"subscribe_all\"}")))  # fmt: skip
        elif parsed[0] == "auth":
            client.subscriber.offer(_reply(error_message("ALREADY_AUTHENTICATED", "this socket is authenticated already")))
        else:
            await client.handle(*parsed)


CREDENTIALS_ENDED = "CREDENTIALS_ENDED"
FORBIDDEN = "FORBIDDEN"
ENDED_CLOSE = {
    TOO_SLOW: CLOSE_TOO_SLOW, STOPPED: CLOSE_GOING_AWAY, CREDENTIALS_ENDED: CLOSE_CREDENTIALS_ENDED,
    FORBIDDEN: CLOSE_FORBIDDEN,
}  # fmt: skip


async def end_when_refused(services: Services, grant: Grant, subscriber: Subscriber, transport: str) -> None:
    """End `subscriber` (`CREDENTIALS_ENDED` or `FORBIDDEN`) once its credentials no longer hold."""
    every = services.fanout.options.recheck if services.fanout is not None else 30.0
    refusal = await keep_checking(services, grant, subscriber, every)
    log.info("live.credentials_ended", transport=transport, error_code=refusal.error_code)
    code = FORBIDDEN if refusal.close_code == CLOSE_FORBIDDEN else CREDENTIALS_ENDED
    subscriber.end(code, f"{refusal.error_code}: {refusal.reason}")


@websocket("/ws", opt={"public": True})
async def live_socket(socket: WebSocket[Any, Any, Any], services: NamedDependency[Services]) -> None:
    """Live device updates in the Kasa Monitor API's shapes (see the module docstring for close codes).

    Authenticates itself (the route is public to the guard): Bearer token or X-API-Key on the
    handshake, or a first message `{"event": "auth", "token": "..."}`.
    """
    await socket.accept()
    fanout = services.fanout
    try:
        grant = await _handshake(socket, services, fanout.options.auth_timeout if fanout else 5.0)
    except Refusal as refused:
        log.info("live.refused", transport="ws", error_code=refused.error_code)
        await _close(socket, refused.close_code, f"{refused.error_code}: {refused.reason}")
        return
    except WebSocketDisconnect:
        return
    if fanout is None or not fanout.running:
        await _close(socket, CLOSE_UNAVAILABLE, "live updates are not available from this process")
        return
    subscriber = fanout.subscribe(principal_ids=principal_ids(grant.principal))
    client = LiveClient(services, subscriber)
    await socket.send_text(_reply({
        "event": "authenticated", "auth": grant.principal.kind, "username": grant.principal.username,
        "permissions": sorted(p.value for p in grant.principal.permissions),
    }).decode())  # fmt: skip
    tasks = [
        asyncio.create_task(_write(socket, subscriber)),
        asyncio.create_task(_read(socket, client)),
        asyncio.create_task(end_when_refused(services, grant, subscriber, "ws")),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # The checker only ends the subscriber; the writer then reports why.
        if tasks[2] in done and not tasks[0].done():
            done = {tasks[0]}
            await asyncio.wait(done, timeout=1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        subscriber.close()
    finished = next(iter(done))
    outcome = finished.exception() if finished.done() and not finished.cancelled() else None
    if isinstance(outcome, Ended):
        await _close(socket, ENDED_CLOSE.get(outcome.code, CLOSE_GOING_AWAY), outcome.reason)
    elif outcome is not None and not isinstance(outcome, WebSocketDisconnect):
        log.warning("live.socket_failed", error=repr(outcome))
        await _close(socket, 1011, "internal error")


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
        services: NamedDependency[Services],
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
        devices = [(await resolve_device(services, key)).device_id for key in (device or [])[:100]]
        since = _since(request.headers.get("last-event-id")) if last_event_id is None else _since(last_event_id)
        headers = credential_headers(request.headers) or {}
        grant = Grant(principal=principal, headers=headers, expires_at=await token_expiry(services, headers))
        return ServerSentEvent(
            _events(services, grant, since, set(devices), principal.can(Permission.AUDIT_VIEW)),
            headers={"X-Accel-Buffering": "no"},
        )


def _visible(event: LiveEvent, devices: set[UUID], audit: bool) -> bool:
    if devices:
        return event.device_id in devices and event.envelope.aggregate in DEVICE_AGGREGATES
    return audit or (event.envelope.aggregate in DEVICE_AGGREGATES and event.device_id is not None)


def _replay_section(services: Services, after: int, until: int) -> list[tuple[int, bytes]]:
    """(id, envelope) of the stored events after `after` up to `until`, one section (runs in a thread)."""
    return [(e.id, encode_envelope(e.id, e.event)) for e in services.event_log.read(after, REPLAY_SECTION, stop=until)]


async def _replay(services: Services, since: int, until: int, devices: set[UUID], audit: bool
                  ) -> AsyncIterator[ServerSentEventMessage]:  # fmt: skip
    after = since
    while after < until:
        section = await asyncio.to_thread(_replay_section, services, after, until)
        if not section:
            return
        for nid, raw in section:
            if _visible(LiveEvent(decode_envelope(raw), raw), devices, audit):
                yield ServerSentEventMessage(data=raw.decode(), id=nid)
        after = section[-1][0]


def _subscribe(services: Services, principal: Principal, devices: set[UUID], audit: bool) -> Subscriber | None:
    """A subscriber for an SSE stream (a deeper queue: it buffers live events during a replay)."""
    fanout = services.fanout
    if fanout is None or not fanout.running:
        return None
    subscriber = fanout.subscribe(principal_ids=principal_ids(principal), queue_size=max(fanout.options.queue_size, 4096))
    for device_id in devices:
        subscriber.watch(device_id)
    if not devices:
        subscriber.watch_all(events=audit)
    return subscriber


async def _events(
    services: Services, grant: Grant, since: int | None, devices: set[UUID], audit: bool
) -> AsyncIterator[ServerSentEventMessage]:
    """Subscribe, replay after `since` up to the log's end as seen then, then live events after that end.

    A replay longer than the subscriber's queue can buffer ends the stream (`: ended: too slow`);
    the client resumes from the last id it got.
    """
    checker: asyncio.Task[None] | None = None
    subscriber = _subscribe(services, grant.principal, devices, audit)
    try:
        replay_end = 0
        if since is not None:
            replay_end = await asyncio.to_thread(services.event_log.max_id)
            async for message in _replay(services, since, replay_end, devices, audit):
                yield message
        if subscriber is None or services.fanout is None:
            yield ServerSentEventMessage(data=None, comment="this process does not follow the stream",
                                         retry=SSE_RETRY_MS)  # fmt: skip
            return
        heartbeat = services.fanout.options.heartbeat
        if grant.headers:
            checker = asyncio.create_task(end_when_refused(services, grant, subscriber, "sse"))
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

