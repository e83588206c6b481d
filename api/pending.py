"""Telling a client that its write is stored but a read model does not show it yet.

A write route stores its events, then waits a few seconds for the read model its
answer (or the client's next read) comes from. When that wait runs out, the
answer keeps its status, since the change is in the event store and in force
(authentication reads the store, not a read model), and names the read models
still behind in the `X-Read-Models-Pending` header: lists such as `GET /api/keys`
may not show the change yet.
"""

from __future__ import annotations

from contextvars import ContextVar

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

PENDING_HEADER = "X-Read-Models-Pending"

_PENDING: ContextVar[set[str] | None] = ContextVar("wattledger_pending_read_models", default=None)


def note_pending(read_model: str, position: int) -> None:
    """Record that this request's write at `position` is not in `read_model` yet (one warning line)."""
    log.warning("api.read_model_behind", read_model=read_model, position=position)
    pending = _PENDING.get()
    if pending is not None:
        pending.add(read_model)


class ReportPendingReadModels(ASGIMiddleware):
    """Adds `X-Read-Models-Pending: <read model>, …` to an answer whose wait for a read model ran out."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        pending: set[str] = set()
        token = _PENDING.set(pending)

        async def send_with_note(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                headers = [*message.get("headers", []), (PENDING_HEADER.lower().encode(),
                                                         ", ".join(sorted(pending)).encode())]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        try:
            await next_app(scope, receive, send_with_note)
        finally:
            _PENDING.reset(token)
