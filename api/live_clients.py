"""What every live transport shares (the WebSocket at `/ws`, socket.io, Server-Sent Events):
checking a client's credentials, checking them again for as long as it stays, subscribing it
by device address or id, and the current state it gets on subscribing.

Credentials are checked as for every HTTP route (`authenticate_headers`), then again whenever
an identity event names the client's session, key or user, every `recheck` seconds, and when
the access token expires; a subscription whose credentials no longer hold is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
import structlog

from adapters.fanout import Subscriber
from api.controllers.devices import resolve_device
from api.deps import LiveDeps
from domain.access import Permission, Principal
from domain.authentication import API_KEY_HEADER, authenticate_headers
from domain.errors import DomainError, InsufficientPermissions
from domain.identity_rules import API_KEY_PREFIX
from projections.devices import DeviceView, list_devices

log = structlog.get_logger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_CREDENTIALS_ENDED = 4001
RECHECKS_AFTER_IDENTITY_EVENT = 5
"""Seconds, after an identity event names a live client's principal, during which it is checked every second."""
CREDENTIALS_ENDED = "CREDENTIALS_ENDED"
FORBIDDEN = "FORBIDDEN"

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


async def token_expiry(deps: LiveDeps, headers: dict[str, str]) -> datetime | None:
    """When the Bearer token among `headers` expires (None for an API key, or a token that does not verify)."""
    authorization = headers.get("authorization")
    if authorization is None:
        return None
    try:
        return (await deps.tokens.verify_access(authorization.partition(" ")[2].strip())).expires_at
    except DomainError:
        return None


async def authenticate(deps: LiveDeps, headers: dict[str, str]) -> Grant:
    """Check credentials as HTTP routes do, and that they allow `DEVICES_VIEW`.

    Raises Refusal: 4401 for missing or invalid credentials (with their error code), 4403 without
    `DEVICES_VIEW`.
    """
    try:
        principal = await authenticate_headers(headers, deps.tokens, deps.identity)
        principal.require(Permission.DEVICES_VIEW)
        expires_at = await token_expiry(deps, headers)
    except InsufficientPermissions as exc:
        raise Refusal(CLOSE_FORBIDDEN, exc.code, str(exc)) from None
    except DomainError as exc:
        raise Refusal(CLOSE_UNAUTHENTICATED, exc.code, str(exc)) from None
    return Grant(principal=principal, headers=headers, expires_at=expires_at)


def principal_ids(principal: Principal) -> list[UUID]:
    """The ids whose identity events may end this principal's credentials: its user, session or key."""
    return [i for i in (principal.user_id, principal.session_id, principal.key_id) if i is not None]


async def keep_checking(deps: LiveDeps, grant: Grant, subscriber: Subscriber, every: float) -> Refusal:
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
            principal = (await authenticate(deps, grant.headers)).principal
        except Refusal as refusal:
            code = CLOSE_FORBIDDEN if refusal.close_code == CLOSE_FORBIDDEN else CLOSE_CREDENTIALS_ENDED
            return Refusal(code, refusal.error_code, refusal.reason)
        if principal.permissions != grant.principal.permissions:
            return Refusal(CLOSE_CREDENTIALS_ENDED, "PERMISSIONS_CHANGED",
                           "the permissions of these credentials changed; connect again")  # fmt: skip
        grant.principal = principal


def encoded(message: dict[str, Any]) -> bytes:
    """A message to a live client, as the JSON bytes its queue holds."""
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

    def __init__(self, deps: LiveDeps, subscriber: Subscriber) -> None:
        self.deps = deps
        self.subscriber = subscriber
        self._pending: list[Callable[[], None]] = []

    async def handle(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply one client message and queue its reply (then any current state); returns the reply.

        Errors are replies (`{"event": "error", "error_code", "detail"}`), never a close.
        """
        reply = await self._apply(event, body)
        self.subscriber.offer(encoded(reply))
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
                view = await resolve_device(self.deps.reads, key.strip())
            except DomainError as exc:
                return error_message(exc.code, str(exc), request=event, device_ip=key)
            if event == "subscribe_device":
                self.subscriber.watch(view.device_id, hold=True)
                state = [encoded(m) for m in state_messages(view)]
                self._pending.append(lambda: self.subscriber.release(view.device_id, state))
                return {"event": "subscribed", "device_ip": view.device_ip, "device_id": str(view.device_id)}
            self.subscriber.unwatch(view.device_id)
            return {"event": "unsubscribed", "device_ip": view.device_ip, "device_id": str(view.device_id)}
        if event == "subscribe_all":
            self.subscriber.watch_all(hold=True)
            async with self.deps.reads.pool.connection() as conn:
                views = await list_devices(conn, self.deps.reads.zone, self.deps.reads.clock.now())
            states = [encoded(m) for view in views for m in state_messages(view)]
            self._pending.append(lambda: self.subscriber.release_all(states))
            return {"event": "subscribed", "all": True, "devices": len(views)}
        if event == "ping":
            return {"event": "pong"}
        return error_message("UNKNOWN_EVENT", f"unknown event {event!r}", request=event)


async def end_when_refused(deps: LiveDeps, grant: Grant, subscriber: Subscriber, transport: str) -> None:
    """End `subscriber` (`CREDENTIALS_ENDED` or `FORBIDDEN`) once its credentials no longer hold."""
    every = deps.fanout.options.recheck
    refusal = await keep_checking(deps, grant, subscriber, every)
    log.info("live.credentials_ended", transport=transport, error_code=refusal.error_code)
    code = FORBIDDEN if refusal.close_code == CLOSE_FORBIDDEN else CREDENTIALS_ENDED
    subscriber.end(code, f"{refusal.error_code}: {refusal.reason}")
