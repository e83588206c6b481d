"""The audit log read model: its queries (`GET /api/audit` pages, and `GET /api/events` pages found
through its indexes), over the tables `projections.audit_projector` writes, in the words of
`projections.audit_words`. `AuditProjector` is named here too, as the read model's projector.

Both filter the audit log's columns the same way, with one builder of conditions: the raw
`actor`, `aggregate`, `event` and `originator_id` by equality and `at` by a start-inclusive,
end-exclusive range, each with an index that keeps position order, so a deep page costs what
the first does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.utils import get_topic

from adapters.eventstore import WattLedger
from adapters.history import (
    DEFAULT_SCAN,
    EventFilter,
    HistoryPage,
    decode_records,
    read_page,
    records_at,
    windowed,
)
from domain.meter import MeterDay
from projections.audit_projector import AUDIT_LOG, AuditProjector, AuditRow
from projections.tracking import TRACKING

__all__ = ["AuditEntry", "AuditFilter", "AuditProjector", "audit_page", "read_events_page"]

AuditEntry = AuditRow
"""The API shows audit rows as they are stored."""


class AuditFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which audit rows to list; `readings` includes the meter's rows (the opening of a meter day: readings
    themselves have no audit row), left out by default."""

    actor: str | None = None
    aggregate: str | None = None
    event: str | None = None
    originator_id: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    readings: bool = False


def _matching(
    equal: Sequence[tuple[str, object | None]], since: datetime | None, until: datetime | None
) -> tuple[list[str], list[Any]]:
    """The conditions on the audit log, and their parameters, for the columns equal to a value
    (those given) and `at` in [since, until)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in equal:
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        clauses.append("at >= %s")
        params.append(since)
    if until is not None:
        clauses.append("at < %s")
        params.append(until)
    return clauses, params


async def audit_page(
    conn: psycopg.AsyncConnection[Any],
    where: AuditFilter,
    *,
    after: int | None,
    limit: int,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[AuditEntry], int | None]:
    """One keyset page of the audit log and the position the next page continues from (None: the end).

    `after` is the last position of the previous page (None: start at the newest, or the
    oldest with `order="asc"`). Each filter has an index that keeps its position order, so a
    deep page costs what the first does.
    """
    clauses, params = _matching(
        (("actor", where.actor), ("aggregate", where.aggregate), ("event", where.event),
         ("originator_id", where.originator_id)),
        where.since, where.until,
    )  # fmt: skip
    if after is not None:
        clauses.insert(0, "position < %s" if order == "desc" else "position > %s")
        params.insert(0, after)
    if not where.readings and where.aggregate is None:
        clauses.append("aggregate <> 'meter'")
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cur = await conn.execute(
        f"{AUDIT_LOG.select}{condition} ORDER BY position {order.upper()} LIMIT %s", [*params, limit + 1]
    )
    rows = [AUDIT_LOG.decode(r) for r in await cur.fetchall()]
    more = len(rows) > limit
    entries = rows[:limit]
    return entries, entries[-1].position if more and entries else None


READING_TOPIC = get_topic(MeterDay.ReadingRecorded)


def _may_be_a_reading(where: EventFilter) -> bool:
    """Whether a reading can pass the filter: the audit log holds no row of a reading to find it by."""
    topics = where.topics()
    return topics is None or READING_TOPIC in topics


async def read_events_page(
    conn: psycopg.AsyncConnection[Any],
    app: WattLedger,
    where: EventFilter,
    *,
    after: int,
    limit: int,
    scan: int = DEFAULT_SCAN,
) -> HistoryPage:
    """One keyset page of `GET /api/events`, using the audit log's indexes for the filters the store
    has none for (type, aggregate, actor, time), when the filter leaves readings out.

    A filter that readings may pass is served by reading the log (`read_page`): readings are
    most of the log and have no audit row.

    Up to the audit log's own position the matching positions come from its indexes, so a page
    holds `limit` events wherever they lie; the events themselves are read from the store and
    checked against the filters again. Past that position (the few events not projected yet) the
    page continues the bounded way of `read_page`, which may come back short with a position to
    go on from.
    """
    if not windowed(where) or _may_be_a_reading(where):
        return await read_page(conn, app, where, after=after, limit=limit, scan=scan)
    cur = await conn.execute(f"SELECT position FROM {TRACKING} WHERE name = %s", (AuditProjector.name,))
    row = await cur.fetchone()
    indexed = int(row[0]) if row else 0
    start = max(after, where.from_position - 1)
    if start >= indexed:
        return await read_page(conn, app, where, after=start, limit=limit, scan=scan)
    clauses, params = _matching(
        (("aggregate", where.aggregate), ("event", where.event_type), ("actor", where.actor),
         ("originator_id", where.originator_id)),
        where.since, where.until,
    )  # fmt: skip
    cur = await conn.execute(
        f"SELECT position FROM {AUDIT_LOG.name} WHERE {' AND '.join(['position > %s', 'position <= %s', *clauses])} "
        f"ORDER BY position LIMIT %s",
        [start, indexed, *params, limit],
    )
    positions = [int(r[0]) for r in await cur.fetchall()]
    records = await records_at(conn, positions)
    events = await asyncio.to_thread(decode_records, app, records, where)
    if len(positions) == limit:
        return HistoryPage(events=events, next_position=positions[-1])
    rest = await read_page(conn, app, where, after=indexed, limit=limit - len(positions), scan=scan)
    return HistoryPage(events=events + rest.events, next_position=rest.next_position)
