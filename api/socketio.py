"""socket.io at `/socket.io/`: the Kasa Monitor API's live events for its socket.io clients, unchanged.

A python-socketio `AsyncServer` (ASGI mode) mounted inside the Litestar app, fed by the same
fan-out and the same subscription code as `/ws`. Clients send credentials in socket.io's
`auth` payload, `{"token": "<access token or API key>"}` (or as `Authorization` / `X-API-Key`
headers), emit `subscribe_device` `{device_ip}`, `unsubscribe_device` `{device_ip}` and
`subscribe_all`, and receive `device_update`, `device_status` and `command_update`; replies
(`subscribed`, `unsubscribed`, `error`) are emitted under their `event` name and also
returned as the acknowledgement. A refused connection gets `connect_error` with
`{"error_code", "message"}`; credentials that end, or a client that does not keep up, get
an `error` event (when it can still be sent) and are disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec
import socketio  # type: ignore[import-untyped]
import structlog
from litestar import asgi
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from adapters.fanout import TOO_SLOW, Ended, LiveEvent, Subscriber
from api.deps import LiveDeps
from api.live_clients import (
    Grant,
    LiveClient,
    Refusal,
    authenticate,
    end_when_refused,
    error_message,
    principal_ids,
    token_headers,
)

log = structlog.get_logger(__name__)

NAMESPACE = "/"


class _Client(msgspec.Struct, kw_only=True):
    grant: Grant
    subscriber: Subscriber
    live: LiveClient
    tasks: list[asyncio.Task[None]] = msgspec.field(default_factory=list)


def _environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {}
    if environ.get("HTTP_AUTHORIZATION"):
        headers["authorization"] = str(environ["HTTP_AUTHORIZATION"])
    elif environ.get("HTTP_X_API_KEY"):
        headers["x-api-key"] = str(environ["HTTP_X_API_KEY"])
    return headers


class LiveSocketIO:
    """The socket.io server and its clients (one subscriber each)."""

    def __init__(self, deps: LiveDeps, origins: Sequence[str]) -> None:
        self.deps = deps
        self.sio = socketio.AsyncServer(
            async_mode="asgi", cors_allowed_origins=list(origins) or None, logger=False, engineio_logger=False
        )
        self.clients: dict[str, _Client] = {}
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        for name in ("subscribe_device", "unsubscribe_device", "subscribe_all", "ping"):
            self.sio.on(name, self._handler(name))
        self.app = socketio.ASGIApp(self.sio, socketio_path=None)

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Authenticate from `auth.token` or the handshake headers; raises ConnectionRefusedError."""
        token = auth.get("token") if isinstance(auth, dict) else None
        headers = token_headers(token) if isinstance(token, str) and token.strip() else _environ_headers(environ)
        fanout = self.deps.fanout
        try:
            grant = await authenticate(self.deps, headers)
        except Refusal as refusal:
            log.info("live.refused", transport="socket.io", error_code=refusal.error_code)
            raise socketio.exceptions.ConnectionRefusedError(
                {"error_code": refusal.error_code, "message": refusal.reason}
            ) from None
        if not fanout.running:
            raise socketio.exceptions.ConnectionRefusedError(
                {"error_code": "LIVE_UNAVAILABLE", "message": "live updates are not available from this process"}
            )
        subscriber = fanout.subscribe(principal_ids=principal_ids(grant.principal))
        client = _Client(grant=grant, subscriber=subscriber, live=LiveClient(self.deps, subscriber))
        self.clients[sid] = client
        client.tasks = [
            asyncio.create_task(self._write(sid, client)),
            asyncio.create_task(end_when_refused(self.deps, grant, subscriber, "socket.io")),
        ]

    async def disconnect(self, sid: str, *_: Any) -> None:
        client = self.clients.pop(sid, None)
        if client is None:
            return
        client.subscriber.close()
        current = asyncio.current_task()
        for task in client.tasks:
            if task is not current:
                task.cancel()

    def _handler(self, name: str) -> Any:
        async def handle(sid: str, data: Any = None) -> Any:
            client = self.clients.get(sid)
            if client is None:
                return error_message("AUTHENTICATION_REQUIRED", "connect with credentials first")
            return await client.live.handle(name, data if isinstance(data, dict) else {})

        return handle

    def _backlog(self, sid: str) -> int:
        """Packets engine.io holds for this client and has not written yet."""
        try:
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
            socket = self.sio.eio.sockets.get(eio_sid)
            return int(socket.queue.qsize()) if socket is not None else 0
        except Exception:  # the client is gone
            return 0

    async def _write(self, sid: str, client: _Client) -> None:
        """Emit the subscriber's queue in order; a client whose engine.io backlog passes the bound is dropped."""
        limit = client.subscriber.queue.maxsize
        try:
            while True:
                item = await client.subscriber.next()
                message = item.seed_object() if isinstance(item, LiveEvent) else msgspec.json.decode(item or b"{}")
                if not message:
                    continue
                if self._backlog(sid) >= limit:
                    client.subscriber.end(TOO_SLOW, f"too slow: {limit} messages unread")
                    continue
                await self.sio.emit(message["event"], message, to=sid)
        except Ended as ended:
            await self._end(sid, ended.code, ended.reason)

    async def _end(self, sid: str, code: str, reason: str) -> None:
        if sid not in self.clients:
            return
        with contextlib.suppress(Exception):
            if code != TOO_SLOW:
                await self.sio.emit("error", error_message(code, reason), to=sid)
            await self.sio.disconnect(sid)
        await self.disconnect(sid)


def socketio_route(deps: LiveDeps, origins: Sequence[str]) -> ASGIRouteHandler:
    """The socket.io server mounted at `/socket.io` (public to the guard: it authenticates on connect);
    `origins` are the other origins it accepts (none: its own origin only)."""
    server = LiveSocketIO(deps, origins)

    @asgi("/socket.io", is_mount=True, copy_scope=True, opt={"public": True})
    async def socket_io(scope: Scope, receive: Receive, send: Send) -> None:
        await server.app(scope, receive, send)

    return socket_io
