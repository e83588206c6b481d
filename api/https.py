"""HTTPS enforced: with `require_https` on in the system configuration, plain HTTP is turned away.

- a request under `/api` answers `403` `HTTPS_REQUIRED` (an API client must not learn to follow
  a redirect with its credentials already sent in the clear);
- any other request (the documentation pages) answers `307` to the same URL over `https://`;
- a plain `ws://` handshake (`/ws`, socket.io) is closed before it is accepted (HTTP 403).

A request is plain when its scheme is `http`/`ws`: the connection's own, or `X-Forwarded-Proto`
of a trusted proxy (`WATTLEDGER_TRUSTED_PROXIES`; uvicorn puts it into the scope). A request from
the machine itself (a loopback peer, no forwarding headers) is let through: it crosses no
network, and it is how an administrator who turned the flag on without any HTTPS in front gets
back in. The flag is read from the event store at most every `HttpsPolicy.ttl` seconds; while the
store cannot be read, the last value read stays in force.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import psycopg
import structlog
from litestar.enums import ScopeType

from api.errors import forbidden_body
from domain.config import ConfigValues
from domain.errors import DomainError

if TYPE_CHECKING:
    from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

log = structlog.get_logger(__name__)

CODE = "HTTPS_REQUIRED"
_PLAIN = frozenset({"http", "ws"})
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class HttpsPolicy:
    """Whether plain HTTP is refused now: `require_https` as `current()` gives it, read at most every `ttl` s."""

    def __init__(self, current: Callable[[], Awaitable[ConfigValues]], *, ttl: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.current = current
        self.ttl = ttl
        self.monotonic = monotonic
        self._value = False
        self._read_at: float | None = None
        self._failing = False

    async def required(self) -> bool:
        now = self.monotonic()
        if self._read_at is not None and now - self._read_at < self.ttl:
            return self._value
        try:
            self._value = (await self.current()).require_https
            if self._failing:
                log.info("https.policy_read_again", require_https=self._value)
            self._failing = False
        except (psycopg.Error, OSError, DomainError) as exc:
            if not self._failing:
                log.warning("https.policy_unreadable", kept=self._value, error=type(exc).__name__)
            self._failing = True
        self._read_at = now
        return self._value


def _local(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        loopback = ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
    return loopback and not any(name in _FORWARDING for name, _ in scope.get("headers", []))


def _host(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1")
            return host if _HOST.match(host) else None
    return None


class RequireHttps:
    """The ASGI wrapper that turns plain HTTP away while `policy` says HTTPS is required."""

    def __init__(self, app: ASGIApp, policy: HttpsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET) or scope.get("scheme", "http") not in _PLAIN or _local(scope) \
                or not await self.policy.required():  # fmt: skip
            await self.app(scope, receive, send)
            return
        if scope["type"] == ScopeType.WEBSOCKET:
            await send({"type": "websocket.close", "code": 1008, "reason": "HTTPS required"})
            return
        path: str = scope["path"]
        host = _host(scope)
        if path == "/api" or path.startswith("/api/") or host is None:
            body = forbidden_body("This server answers over HTTPS only; send the request to https://", CODE, None)
            await _answer(send, 403, msgspec.json.encode(body), [(b"content-type", b"application/json")])
            return
        query = scope.get("query_string", b"").decode("latin-1")
        location = f"https://{host}{scope.get('raw_path', path.encode()).decode('latin-1')}" + (f"?{query}" if query else "")
        await _answer(send, 307, b"", [(b"location", location.encode("latin-1"))])


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start", "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    await send(start)
    done: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(done)
