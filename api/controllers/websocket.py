"""Live device updates over the WebSocket at `/ws`, in the Kasa Monitor API's shapes.

Fed by this process's fan-out (`adapters.fanout`), never by a consumer of its own; credentials
and subscriptions work as for every live transport (`api.live_clients`).

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
from typing import Any

import msgspec
import structlog
from litestar import websocket
from litestar.connection import WebSocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect

from adapters.fanout import STOPPED, TOO_SLOW, Ended, LiveEvent, Subscriber
from api.deps import LiveDeps
from api.live_clients import (
    CLOSE_CREDENTIALS_ENDED,
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    CREDENTIALS_ENDED,
    FORBIDDEN,
    Grant,
    LiveClient,
    Refusal,
    authenticate,
    credential_headers,
    encoded,
    end_when_refused,
    error_message,
    principal_ids,
    token_headers,
)
from domain.errors import AuthenticationRequired

log = structlog.get_logger(__name__)

CLOSE_AUTH_TIMEOUT = 4408
CLOSE_TOO_SLOW = 4429
CLOSE_UNAVAILABLE = 1013
CLOSE_GOING_AWAY = 1001
CLOSE_TIMEOUT_S = 10.0
ENDED_CLOSE = {
    TOO_SLOW: CLOSE_TOO_SLOW, STOPPED: CLOSE_GOING_AWAY, CREDENTIALS_ENDED: CLOSE_CREDENTIALS_ENDED,
    FORBIDDEN: CLOSE_FORBIDDEN,
}  # fmt: skip


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


async def _handshake(socket: WebSocket[Any, Any, Any], deps: LiveDeps, timeout: float) -> Grant:
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
    return await authenticate(deps, headers)


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
            client.subscriber.offer(encoded(error_message(
                "INVALID_MESSAGE", "send JSON objects such as {\"event\": \"subscribe_all\"}")))  # fmt: skip
        elif parsed[0] == "auth":
            client.subscriber.offer(encoded(error_message("ALREADY_AUTHENTICATED", "this socket is authenticated already")))
        else:
            await client.handle(*parsed)


@websocket("/ws", opt={"public": True})
async def live_socket(socket: WebSocket[Any, Any, Any], live_deps: NamedDependency[LiveDeps]) -> None:
    """Live device updates in the Kasa Monitor API's shapes (see the module docstring for close codes).

    Authenticates itself (the route is public to the guard): Bearer token or X-API-Key on the
    handshake, or a first message `{"event": "auth", "token": "..."}`.
    """
    await socket.accept()
    fanout = live_deps.fanout
    try:
        grant = await _handshake(socket, live_deps, fanout.options.auth_timeout)
    except Refusal as refused:
        log.info("live.refused", transport="ws", error_code=refused.error_code)
        await _close(socket, refused.close_code, f"{refused.error_code}: {refused.reason}")
        return
    except WebSocketDisconnect:
        return
    if not fanout.running:
        await _close(socket, CLOSE_UNAVAILABLE, "live updates are not available from this process")
        return
    subscriber = fanout.subscribe(principal_ids=principal_ids(grant.principal))
    client = LiveClient(live_deps, subscriber)
    await socket.send_text(encoded({
        "event": "authenticated", "auth": grant.principal.kind, "username": grant.principal.username,
        "permissions": sorted(p.value for p in grant.principal.permissions),
    }).decode())  # fmt: skip
    tasks = [
        asyncio.create_task(_write(socket, subscriber)),
        asyncio.create_task(_read(socket, client)),
        asyncio.create_task(end_when_refused(live_deps, grant, subscriber, "ws")),
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
