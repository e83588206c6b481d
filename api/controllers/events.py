"""The event history, the audit log and the head of the hash chain (AUDIT_VIEW)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, Parameter

from adapters.contract import EventData, Envelope
from adapters.history import EventFilter
from api.cursors import CursorError, decode_cursor, encode_cursor, filter_fingerprint, fingerprint
from api.deps import HistoryDeps
from domain.errors import InvalidCursor, PageLimitExceeded
from domain.access import Permission
from projections.audit import AuditEntry, AuditFilter, audit_page, read_events_page
from projections.chain import ALGORITHM, GENESIS, chain_head

MAX_LIMIT = 1000
Limit = Annotated[int, Parameter(ge=1, description=f"events per page, at most {MAX_LIMIT}")]
Name = Annotated[str, Parameter(max_length=200)]
Cursor = Annotated[str, Parameter(max_length=200, description="`next_cursor` of the previous page")]


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event: its global `position`, the aggregate and version, and its contract `data`."""

    position: int
    originator_id: UUID
    version: int
    aggregate: str
    type: str
    timestamp: datetime
    actor: str
    data: dict[str, Any]

    @classmethod
    def of(cls, envelope: Envelope[EventData]) -> EventView:
        return cls(
            position=envelope.notification_id, originator_id=envelope.originator_id, version=envelope.version,
            aggregate=envelope.aggregate, type=envelope.event, timestamp=envelope.timestamp, actor=envelope.actor,
            data=msgspec.to_builtins(envelope.data),
        )  # fmt: skip


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of events; `next_cursor` is null at the end of the log (a page may be short before then)."""

    events: list[EventView]
    next_cursor: str | None
    limit: int


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[AuditEntry]
    next_cursor: str | None
    limit: int


class AuditHead(msgspec.Struct, frozen=True, kw_only=True):
    """The newest link of the hash chain; `unchained` events are stored but not chained yet."""

    position: int
    hash: str
    algorithm: str
    events_stored: int
    unchained: int


def as_utc(moment: datetime | None) -> datetime | None:
    """A time filter in UTC; one without a zone is taken as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _check_limit(limit: int) -> None:
    if limit > MAX_LIMIT:
        raise PageLimitExceeded(f"limit may be at most {MAX_LIMIT}, got {limit}")


def _position(cursor: str | None, print_: str) -> int | None:
    if cursor is None:
        return None
    try:
        return decode_cursor(cursor, print_)
    except CursorError as exc:
        raise InvalidCursor(str(exc)) from None


def _with_link(request: Request[Any, Any, Any], body: Any, cursor: str | None) -> Response[Any]:
    """The page, with `Link: <same query, next cursor>; rel="next"` when there is a next page."""
    if cursor is None:
        return Response(body)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"] + [("cursor", cursor)]
    return Response(body, headers={"Link": f'<{request.url.path}?{urlencode(query)}>; rel="next"'})


class EventsController(Controller):
    path = "/api"
    tags = ["audit"]

    @get("/events", operation_id="listEvents", opt={"permission": Permission.AUDIT_VIEW})
    async def events(
        self,
        request: Request[Any, Any, Any],
        history_deps: NamedDependency[HistoryDeps],
        aggregate: FromQuery[Name | None] = None,
        originator_id: FromQuery[UUID | None] = None,
        event_type: FromQuery[Name | None] = None,
        actor: FromQuery[Name | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        from_position: FromQuery[Annotated[int, Parameter(ge=1)]] = 1,
        limit: FromQuery[Limit] = 100,
        cursor: FromQuery[Cursor | None] = None,
    ) -> Response[EventPage]:
        """The stored events in log order, straight from the event store, each in the public contract's form.

        Filters: `aggregate` (`device`, `meter`, `user`, ...), `originator_id`, `event_type`
        (`Added`, `ReadingRecorded`, ...), `actor` (`user:<id>`, `key:<id>`, `system:poller`, ...),
        `since` (inclusive) and `until` (exclusive) on the event's time (UTC when no zone is given),
        `from_position`. Pages are keyset pages: follow `next_cursor` (also in `Link: rel="next"`)
        with the same filters. Type, aggregate, actor and time filters are served by the audit log's
        indexes; only past its position (events not projected yet) does a page look at the next 10,000
        positions at most, so such a page may be short while `next_cursor` still leads on.
        422 LIMIT_TOO_LARGE above 1000; 400 INVALID_CURSOR for a cursor of other filters.
        """
        _check_limit(limit)
        where = EventFilter(
            aggregate=aggregate, originator_id=originator_id, event_type=event_type, actor=actor,
            since=as_utc(since), until=as_utc(until), from_position=from_position,
        )  # fmt: skip
        after = _position(cursor, filter_fingerprint(where))
        async with history_deps.reads.pool.connection() as conn:
            page = await read_events_page(conn, history_deps.store, where, after=after or 0, limit=limit)
        next_cursor = None if page.next_position is None else encode_cursor(page.next_position, filter_fingerprint(where))
        body = EventPage(events=[EventView.of(e) for e in page.events], next_cursor=next_cursor, limit=limit)
        return _with_link(request, body, next_cursor)

    @get("/audit", operation_id="listAudit", opt={"permission": Permission.AUDIT_VIEW})
    async def audit(
        self,
        request: Request[Any, Any, Any],
        history_deps: NamedDependency[HistoryDeps],
        actor: FromQuery[Name | None] = None,
        aggregate: FromQuery[Name | None] = None,
        event_type: FromQuery[Name | None] = None,
        originator_id: FromQuery[UUID | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        readings: FromQuery[bool] = False,
        order: FromQuery[Literal["desc", "asc"]] = "desc",
        limit: FromQuery[Limit] = 100,
        cursor: FromQuery[Cursor | None] = None,
    ) -> Response[AuditPage]:
        """The audit log in words: who (user, API key, command line or system part) did what, to what,
        when, and from where when known (the client address of a sign-in). Newest first unless
        `order=asc`. Filters: `actor` (raw, e.g. `user:<id>`), `aggregate`, `event_type`, `originator_id`,
        `since`/`until`; meter readings are left out unless `readings=true` or `aggregate=meter`.
        Keyset pages through `next_cursor` / `Link: rel="next"`; 422 LIMIT_TOO_LARGE above 1000."""
        _check_limit(limit)
        where = AuditFilter(
            actor=actor, aggregate=aggregate, event=event_type, originator_id=originator_id,
            since=as_utc(since), until=as_utc(until), readings=readings,
        )  # fmt: skip
        print_ = fingerprint(where, order)
        after = _position(cursor, print_)
        async with history_deps.reads.pool.connection() as conn:
            entries, last = await audit_page(conn, where, after=after, limit=limit, order=order)
        next_cursor = None if last is None else encode_cursor(last, print_)
        return _with_link(request, AuditPage(entries=entries, next_cursor=next_cursor, limit=limit), next_cursor)

    @get("/audit/head", operation_id="getAuditHead", opt={"permission": Permission.AUDIT_VIEW})
    async def head(self, history_deps: NamedDependency[HistoryDeps]) -> AuditHead:
        """The head of the SHA-256 hash chain over the stored events (position 0 and zeros while empty).
        Keep a copy: `wattledger audit verify` shows whether the stored history still leads to it."""
        newest = await history_deps.reads.newest()
        async with history_deps.reads.pool.connection() as conn:
            head = await chain_head(conn)
        position, digest = (head.position, head.hash) if head else (0, GENESIS.hex())
        return AuditHead(position=position, hash=digest, algorithm=ALGORITHM, events_stored=newest,
                         unchained=max(newest - position, 0))  # fmt: skip
