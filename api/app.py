"""The Litestar application factory, with the edge guards every route shares."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from litestar import Litestar, Request
from litestar.di import Provide
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import SerializationException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPRequestEvent, Message, Receive, Scope, Send

from adapters.eventstore import watch_writes
from api.controllers.alerts import AlertsController
from api.controllers.auth import AuthController
from api.controllers.backups import BackupsController
from api.controllers.badges import BadgesController
from api.controllers.compliance import ComplianceController
from api.controllers.config import ConfigController
from api.controllers.control import ControlController
from api.controllers.dashboard import DashboardController, static_router
from api.controllers.devices import DevicesController
from api.controllers.energy import EnergyController
from api.controllers.events import EventsController
from api.controllers.exports import ExportsController
from api.controllers.keys import KeysController
from api.controllers.live import LiveController
from api.controllers.metrics import AcceptBasicAuth, MetricsController
from api.controllers.push import PushController
from api.controllers.rates import RatesController
from api.controllers.relay_api import RelayApiController
from api.controllers.ssl import ssl_router
from api.controllers.system import SystemController
from api.controllers.uptime import UptimeController
from api.controllers.users import UsersController
from api.controllers.web_session import WebSessionController
from api.controllers.websocket import live_socket
from api.deps import VERSION, ApiDeps
from api.edge import cors_config, install_edge
from api.errors import CONNECTION_LOST_FLAG, EXCEPTION_HANDLERS, RefusedInput
from api.guards import Authorizer, provide_principal, schema_config
from api.headers import SecurityHeaders
from api.https import HttpsPolicy, RequireHttps
from api.metrics import TimeRequests
from api.pending import ReportPendingReadModels
from api.security import TallyRefusals
from api.socketio import socketio_route

log = structlog.get_logger(__name__)

READ_ATTEMPTS = 4
READ_RETRY_BACKOFF_S = 0.05
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RetryLostConnections(ASGIMiddleware):
    """Repeat a request whose database connection broke under it before it stored anything, a
    bounded number of times.

    A read (GET, HEAD) changes nothing, and a command that lost its connection before handing any
    event to the store has changed nothing either, so running either again is safe; a command that
    lost it while saving is not repeated (its outcome is unknown: 503). The failed attempt's
    response is dropped before any of it is sent; the last attempt's response goes out whatever it
    is. Before a retry, `on_lost` gets rid of the pools' other dead connections.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        self.on_lost = on_lost

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        safe = scope.get("method") in _SAFE_METHODS
        state: dict[str, Any] = scope.setdefault("state", {})
        if not safe and _streamed(scope):
            # An upload streams through once, never held here: the route bounds it as it arrives.
            await next_app(scope, receive, send)
            return
        if not safe:
            # The body is read once and handed to every attempt.
            body = await Request(scope, receive).body()
            receive = _replaying(body)
        for attempt in range(1, READ_ATTEMPTS + 1):
            state.pop(CONNECTION_LOST_FLAG, None)
            last = attempt == READ_ATTEMPTS
            dropped = False
            writes = watch_writes()

            async def send_unless_retried(message: Message) -> None:
                nonlocal dropped
                if (message["type"] == "http.response.start" and not last and state.get(CONNECTION_LOST_FLAG)
                        and (safe or not writes.wrote)):  # fmt: skip
                    dropped = True
                if not dropped:
                    await send(message)

            await next_app(scope, receive, send_unless_retried)
            if not dropped:
                return
            log.info("api.read_retried", path=scope.get("path"), attempt=attempt)
            try:
                await self.on_lost()
            except Exception as exc:  # best effort: the retry runs anyway
                log.warning("api.pool_check_failed", error=repr(exc))
            await asyncio.sleep(READ_RETRY_BACKOFF_S * attempt)


def _streamed(scope: Scope) -> bool:
    """Whether the request is an upload (multipart/form-data) to a route that reads its body as a
    form or a stream. A route that takes JSON decodes any body as JSON, whatever its content type
    says, so such a request is checked and buffered like any other."""
    headers = dict(scope.get("headers") or [])
    multipart = bytes(headers.get(b"content-type", b"")).lower().startswith(b"multipart/form-data")
    return multipart and not _takes_json(scope)


def _takes_json(scope: Scope) -> bool:
    """Whether the matched route decodes its `data` as JSON."""
    handler = scope.get("route_handler")
    parameter = handler.parsed_fn_signature.parameters.get("data") if handler is not None else None
    if parameter is None:
        return False
    media_type = getattr(parameter.kwarg_definition, "media_type", RequestEncodingType.JSON)
    return bool(media_type == RequestEncodingType.JSON)


def _replaying(body: bytes) -> Receive:
    """An ASGI `receive` that hands out `body` whole, as often as a request is run."""

    async def receive() -> HTTPRequestEvent:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class RefuseUnsafeInput(ASGIMiddleware):
    """400 for input no route can use and some would choke on: control characters in the path,
    and JSON bodies nested deeper than the decoder can go."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = scope.get("path", "")
        if not path.isprintable() and any(unicodedata.category(c) == "Cc" for c in path):
            log.info("api.path_refused", path=path, method=scope.get("method"))
            raise RefusedInput("The path holds control characters", "INVALID_PATH")
        if scope.get("method") in _BODY_METHODS and not _streamed(scope):
            request: Request[Any, Any, Any] = Request(scope, receive)
            if await request.body():
                try:
                    # Decoded once here; the handler reuses the cached value.
                    await request.json()
                except RecursionError:
                    raise RefusedInput("The JSON body is nested too deeply", "JSON_TOO_DEEP") from None
                except SerializationException:
                    pass
        await next_app(scope, receive, send)


def create_app(deps: ApiDeps) -> Litestar:
    """Build the HTTP app over ready dependencies; it opens and closes nothing itself.

    Each controller takes the set of its area (`api.deps`) under that set's key."""
    provided = {key: Provide(_constant(value), sync_to_thread=False) for key, value in deps.provided().items()}
    app = Litestar(
        route_handlers=[
            SystemController, DevicesController, AuthController, UsersController, KeysController, EventsController,
            ComplianceController, ExportsController,
            ControlController, RelayApiController, ConfigController,
            EnergyController, RatesController,
            LiveController, live_socket, socketio_route(deps.live, deps.edge.cors_origins), MetricsController,
            *([BackupsController] if deps.backups is not None else []),
            UptimeController, BadgesController, PushController,
            *([AlertsController] if deps.alerts is not None else []),
            DashboardController, WebSessionController, static_router(),
            *([ssl_router(deps.tls)] if deps.tls is not None else []),
        ],
        dependencies={
            **provided,
            "principal": Provide(provide_principal, sync_to_thread=False),
            "metrics": Provide(_constant(deps.metrics), sync_to_thread=False),
        },
        guards=[Authorizer(deps.identity.identity, deps.identity.tokens)],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[TimeRequests(deps.metrics), RetryLostConnections(deps.reads.drop_dead_connections), RefuseUnsafeInput(),
                    ReportPendingReadModels(), AcceptBasicAuth(deps.metrics_basic)],
        openapi_config=schema_config(VERSION),
        cors_config=cors_config(deps.edge.cors_origins),
        debug=False,
    )
    install_edge(app, deps.edge)
    app.asgi_handler = TallyRefusals(app.asgi_handler, deps.refusals)
    app.asgi_handler = RequireHttps(app.asgi_handler, HttpsPolicy(deps.config.config.current))
    app.asgi_handler = SecurityHeaders(app.asgi_handler)
    return app


def _constant(value: object) -> Callable[[], object]:
    """A provider that hands out `value` as it is."""

    def provide() -> object:
        return value

    return provide
