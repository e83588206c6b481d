"""Reading the stored event history in SQL: filtered, keyset-paginated, and as raw records.

The events live in the eventsourcing library's PostgreSQL table
`wl_events.wattledger_events` (the application's name in lower case plus `_events`):
`originator_id uuid, originator_version bigint, topic text, state bytea,
notification_id bigserial`, primary key `(originator_id, originator_version)` and a
unique index on `notification_id`. Everything here reads that table directly, in
notification order, so reads never depend on a read model being current.

Filters: `aggregate` and `event_type` become a list of topics and `originator_id` an
equality, all evaluated by PostgreSQL; `actor`, `since` and `until` are in the stored
payload, so they are checked on the decoded event. Only the originator id has an index
in the store (its primary key), so a page with any other filter looks at a bounded
window of positions after its cursor and returns the ones that match: every page
costs the same however deep it is (keyset on `notification_id`, never OFFSET), and a
page may hold fewer than `limit` events while `next_position` says where to go on.

Decoding goes through `adapters.eventlog`, as for every reader of the log: this module adds
what the library's log reader cannot be asked for (stream filters, bounded keyset pages, the
stored bytes themselves for the hash chain, a snapshot on the caller's own connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from adapters.contract import CONTRACT, EventData, Envelope, aggregate_name, envelope_for
from adapters.eventlog import EventLog
from adapters.eventstore import EVENTS_SCHEMA, WattLedger

__all__ = [
    "EVENTS_TABLE",
    "EventFilter",
    "HistoryPage",
    "StoredRecord",
    "decode_records",
    "iter_records",
    "read_page",
    "records_at",
    "records_for_events",
    "records_of",
]

EVENTS_TABLE: Final = f"{EVENTS_SCHEMA}.{WattLedger.name.lower()}_events"
"""The stored events table (the library names it after the application)."""

_COLUMNS = "notification_id, originator_id, originator_version, topic, state"
DEFAULT_SCAN: Final = 10_000
"""Stored events one page reads at most while looking for matches of the payload filters."""


class StoredRecord(msgspec.Struct, frozen=True):
    """One row of the stored events table, its `state` exactly the bytes PostgreSQL holds."""

    notification_id: int
    originator_id: UUID
    version: int
    topic: str
    state: bytes

    def notification(self) -> Notification:
        return Notification(
            id=self.notification_id, originator_id=self.originator_id, originator_version=self.version,
            topic=self.topic, state=self.state,
        )  # fmt: skip


def _topics_by_name() -> dict[tuple[str, str], str]:
    return {(aggregate_name(cls), cls.__name__): get_topic(cls) for cls in CONTRACT}


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which events to read. Every field given must hold; `since` is inclusive, `until` exclusive,
    `from_position` the first notification id that may be returned."""

    aggregate: str | None = None
    originator_id: UUID | None = None
    event_type: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_position: int = 1

    def topics(self) -> list[str] | None:
        """The topics `aggregate` and `event_type` allow (None: any; empty: no event can match)."""
        if self.aggregate is None and self.event_type is None:
            return None
        return sorted(
            topic
            for (aggregate, event), topic in _topics_by_name().items()
            if self.aggregate in (None, aggregate) and self.event_type in (None, event)
        )

    @property
    def needs_payload(self) -> bool:
        return self.actor is not None or self.since is not None or self.until is not None

    def matches(self, envelope: Envelope[EventData]) -> bool:
        """Whether a decoded event passes the payload filters (actor and time)."""
        if self.actor is not None and envelope.actor != self.actor:
            return False
        if self.since is not None and envelope.timestamp < self.since:
            return False
        return self.until is None or envelope.timestamp < self.until

    def described(self) -> dict[str, Any]:
        """The filters given, as JSON-ready values (for manifests and logs); `{}` for the whole log."""
        given = {k: v for k, v in msgspec.to_builtins(self).items() if v is not None}
        if given.get("from_position") == 1:
            del given["from_position"]
        return given


def _where(where: EventFilter, after: int, stop: int | None) -> tuple[str, list[Any]]:
    clauses = ["notification_id > %s"]
    params: list[Any] = [max(after, where.from_position - 1)]
    if stop is not None:
        clauses.append("notification_id <= %s")
        params.append(stop)
    if where.originator_id is not None:
        clauses.append("originator_id = %s")
        params.append(where.originator_id)
    topics = where.topics()
    if topics is not None:
        clauses.append("topic = ANY(%s)")
        params.append(topics)
    return " AND ".join(clauses), params


def _record(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(int(row[0]), row[1], int(row[2]), row[3], bytes(row[4]))


def iter_records(
    conn: psycopg.Connection[Any],
    where: EventFilter | None = None,
    *,
    after: int = 0,
    stop: int | None = None,
    batch: int = 5000,
) -> Iterator[StoredRecord]:
    """Every stored record after `after` (up to `stop`) in notification order, as PostgreSQL holds it.

    Streams through a server-side cursor `batch` rows at a time, so memory stays flat
    however long the log; the connection must not be in autocommit mode (the cursor
    lives in its transaction). Only the SQL filters apply here (see `decode_records`).
    """
    where = where or EventFilter()
    if where.topics() == []:
        return
    clause, params = _where(where, after, stop)
    with conn.cursor(name="wl_history", withhold=False) as cur:
        cur.itersize = batch
        cur.execute(f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE {clause} ORDER BY notification_id", params)
        for row in cur:
            yield _record(row)


def decode_records(
    app: WattLedger, records: Sequence[StoredRecord], where: EventFilter | None = None
) -> list[Envelope[EventData]]:
    """The public envelopes of stored records (the contract's form, as the stream carries them),
    keeping those that pass the payload filters. Raises what decoding raises for a record
    that no longer decodes (e.g. its bytes were changed)."""
    events = EventLog(app).decode_all([r.notification() for r in records])
    envelopes = [envelope_for(r.notification_id, event) for r, event in zip(records, events, strict=True)]
    if where is None or not where.needs_payload:
        return envelopes
    return [e for e in envelopes if where.matches(e)]


async def records_of(
    conn: psycopg.AsyncConnection[Any], where: EventFilter, *, after: int, limit: int, stop: int | None = None
) -> list[StoredRecord]:
    """Up to `limit` stored records after `after` (up to `stop`) that pass the SQL filters, in log order."""
    if where.topics() == []:
        return []
    clause, params = _where(where, after, stop)
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE {clause} ORDER BY notification_id LIMIT %s",
        [*params, limit],
    )
    return [_record(row) for row in await cur.fetchall()]


async def records_at(conn: psycopg.AsyncConnection[Any], positions: Sequence[int]) -> list[StoredRecord]:
    """The stored records at `positions` (those the store holds), in log order."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM {EVENTS_TABLE} WHERE notification_id = ANY(%s) ORDER BY notification_id",
        (list(positions),),
    )
    return [_record(row) for row in await cur.fetchall()]


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of events; `next_position` is where the next page starts after (None: the end)."""

    events: list[Envelope[EventData]]
    next_position: int | None


def windowed(where: EventFilter) -> bool:
    """Whether a page must bound how far it looks: filters no index of the store serves (the
    originator id has the store's primary key; types and payload fields have no index there)."""
    return where.needs_payload or (where.topics() is not None and where.originator_id is None)


async def read_page(
    conn: psycopg.AsyncConnection[Any],
    app: WattLedger,
    where: EventFilter,
    *,
    after: int,
    limit: int,
    scan: int = DEFAULT_SCAN,
) -> HistoryPage:
    """One keyset page: at most `limit` events after position `after` that pass every filter.

    Unfiltered, or by originator id, the page is the next `limit` matching records. With a
    type, aggregate, actor or time filter the page looks at the next `scan` positions of
    the log at most (PostgreSQL has no index for those), so it may come back short, or
    empty, with a `next_position` to continue from: every page costs the same however deep
    it is. `next_position` is None once the end of the log was reached. Decoding runs in a
    worker thread (decoding is synchronous).
    """
    if not windowed(where):
        records = await records_of(conn, where, after=after, limit=limit + 1)
        more = len(records) > limit
        records = records[:limit]
        events = await asyncio.to_thread(decode_records, app, records)
        return HistoryPage(events=events, next_position=records[-1].notification_id if more and records else None)
    start = max(after, where.from_position - 1)
    stop = start + max(scan, limit)
    records = await records_of(conn, where, after=start, limit=max(scan, limit), stop=stop)
    decoded = await asyncio.to_thread(decode_records, app, records)
    kept: list[Envelope[EventData]] = []
    for envelope in decoded:
        if where.matches(envelope):
            kept.append(envelope)
            if len(kept) == limit:
                return HistoryPage(events=kept, next_position=envelope.notification_id)
    cur = await conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}")
    row = await cur.fetchone()
    newest = int(row[0]) if row else 0
    return HistoryPage(events=kept, next_position=stop if stop < newest else None)


def records_for_events(cur: psycopg.Cursor[Any], events: Sequence[object]) -> list[StoredRecord]:
    """The stored records of decoded events (by originator id and version), in notification order.

    For projectors, which receive decoded events without their positions. An event whose
    record is gone (deleted behind the system's back) is missing from the answer.
    """
    if not events:
        return []
    ids = [getattr(e, "originator_id") for e in events]
    versions = [getattr(e, "originator_version") for e in events]
    cur.execute(
        f"SELECT s.notification_id, s.originator_id, s.originator_version, s.topic, s.state "
        f"FROM {EVENTS_TABLE} s JOIN unnest(%s::uuid[], %s::bigint[]) AS k(o, v) "
        f"ON s.originator_id = k.o AND s.originator_version = k.v ORDER BY s.notification_id",
        (ids, versions),
    )
    return [_record(row) for row in cur.fetchall()]
