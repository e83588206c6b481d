"""Security headers on every HTTP answer, added at the outermost edge (the rate limiter's 429s included).

- `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY` everywhere;
- `Content-Security-Policy`: the API's answers are data, never pages, so nothing may load or frame
  them (`default-src 'none'; frame-ancestors 'none'`); the OpenAPI pages under `/schema` get
  `SCHEMA_CSP`, which lets their renderers load from the CDNs Litestar takes them from; the
  dashboard's page and files get `PAGE_CSP`: its own scripts and styles only;
- `Strict-Transport-Security` when the request came over HTTPS (the connection's scheme, or
  `X-Forwarded-Proto` from a trusted proxy);
- `Cache-Control: no-store` on sign-in, session, user and key answers, which carry tokens and
  account details.

A header the route set itself is kept, except `Cache-Control` on those answers. A layer inside
may leave headers for the answer in `scope[ANSWER_HEADERS]` instead of wrapping `send` itself: they
are added after the answer's own, before the security headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from litestar.enums import ScopeType

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The renderers' bundles come from these CDNs (Litestar's defaults); their start-up script is inline,
# Redoc searches in a blob: worker, and some bundles compile code at run time. The pages hold the
# OpenAPI document only, never user data.
_CDNS = "https://cdn.redoc.ly https://cdn.jsdelivr.net https://unpkg.com"
SCHEMA_CSP = "; ".join((
    "default-src 'none'",
    f"script-src 'self' 'unsafe-inline' 'unsafe-eval' {_CDNS}",
    f"style-src 'self' 'unsafe-inline' https://fonts.googleapis.com {_CDNS}",
    f"font-src 'self' data: https://fonts.gstatic.com {_CDNS}",
    f"img-src 'self' data: {_CDNS}",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "child-src 'self' blob:",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
))  # fmt: skip
# The dashboard (`/` and `/static/`) runs only its own files: no inline script or style, no other origin;
# it connects to its own API and WebSocket ('self' covers ws: and wss: of the same host).
PAGE_CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
))  # fmt: skip
PAGE_PATH, STATIC_PREFIX = "/", "/static/"
HSTS = "max-age=31536000"
NO_STORE_PREFIXES = ("/api/auth/", "/api/users", "/api/keys")
SCHEMA_PATH = "/schema"


def security_headers(path: str, scheme: str) -> dict[str, str]:
    """The headers an answer to a request for `path` over `scheme` carries."""
    schema = path == SCHEMA_PATH or path.startswith(SCHEMA_PATH + "/")
    page = path == PAGE_PATH or path.startswith(STATIC_PREFIX)
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": SCHEMA_CSP if schema else PAGE_CSP if page else API_CSP,
    }
    if scheme == "https":
        headers["Strict-Transport-Security"] = HSTS
    if path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"
    return headers


_CACHE_CONTROL = b"cache-control"
ANSWER_HEADERS = "wattledger.answer_headers"
"""Scope key of the list of headers a layer inside `SecurityHeaders` adds to the answer through it
(the rate limiter's labels), in the one pass it makes over the answer's headers anyway."""


def _encoded(path: str, scheme: str) -> tuple[tuple[bytes, bytes], ...]:
    """`security_headers` as an ASGI message spells them (lower-case names, bytes)."""
    spelled = security_headers(path, scheme)
    key = tuple(spelled.items())
    found = _ENCODED.get(key)
    if found is None:
        found = _ENCODED[key] = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in key)
    return found


_ENCODED: dict[tuple[tuple[str, str], ...], tuple[tuple[bytes, bytes], ...]] = {}
"""Each distinct set of security headers, encoded once (there are a handful)."""


def _with(
    headers: Iterable[tuple[bytes, bytes]], added: Sequence[tuple[bytes, bytes]], inner: Sequence[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """The answer's headers, then `inner` (added as they are), then `added`: one the route set itself
    is kept, except Cache-Control, which `added` replaces (every copy of it) when it has one. No
    header of `added` is ever among `inner`."""
    out = list(headers)
    present = {bytes(name).lower() for name, _ in out}
    if inner:
        out += inner
    for name, value in added:
        if name == _CACHE_CONTROL and name in present:
            out = [header for header in out if bytes(header[0]).lower() != _CACHE_CONTROL]
        elif name in present:
            continue
        out.append((name, value))
    return out


class SecurityHeaders:
    """The ASGI wrapper that adds `security_headers` (and a layer's `ANSWER_HEADERS`) to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        added = _encoded(scope["path"], scope.get("scheme", "http"))
        inner: list[tuple[bytes, bytes]] = []
        scope[ANSWER_HEADERS] = inner  # type: ignore[literal-required]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with(message.get("headers") or (), added, inner)
            await send(message)

        await self.app(scope, receive, send_with_headers)
