"""Where each read model stands: the tracking and quarantine tables, and the status read from them.

The tracking table holds one row per read model: its position in the log, the schema
version its tables were built with, and its failure while it is failing. The
quarantine table holds the events a read model went on past (see
`projections.quarantine`). Both are the engine's own and are created by its `setup()`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg

from projections.tables import READ_SCHEMA

__all__ = [
    "CLEARED",
    "QUARANTINE",
    "QUARANTINE_SHOWN",
    "TRACKING",
    "TRACKING_DDL",
    "ProjectorStatus",
    "QuarantinedEvent",
    "database_size",
    "projector_position",
    "projector_states",
    "projector_status",
    "quarantine_counts",
    "quarantined_events",
]

TRACKING = f"{READ_SCHEMA}.projector_tracking"
QUARANTINE = f"{READ_SCHEMA}.projector_quarantine"

# The tracking table is the engine's own; columns added since its first version
# are added in place so an existing deployment keeps its rows (and, with no
# recorded version, rebuilds its read models once).
TRACKING_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {READ_SCHEMA};
CREATE TABLE IF NOT EXISTS {TRACKING} (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {TRACKING}
    ADD COLUMN IF NOT EXISTS version integer,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS failing_since timestamptz,
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {QUARANTINE} (
    projector text NOT NULL,
    position bigint NOT NULL,
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text NOT NULL,
    error text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, position)
);
"""

CLEARED = "last_error = NULL, failed_at = NULL, failing_since = NULL, attempts = 0"
"""Resets a tracking row's failure (SET clause), once the read model applied a section."""


class QuarantinedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a read model could not apply and went on past: where it is in the log, and why."""

    projector: str
    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    error: str
    quarantined_at: datetime


class ProjectorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far a read model is, whether it is failing, and the events it quarantined.

    `state` is `current`, `failing` (its last attempt failed; it is retried with backoff) or
    `degraded` (it goes on, but `quarantined` events are missing from it until
    `wattledger project --retry` applies them). `quarantine` lists the newest of them.
    """

    name: str
    version: int
    position: int
    lag: int
    last_error: str | None
    failing_since: datetime | None
    state: str = "current"
    quarantined: int = 0
    quarantine: list[QuarantinedEvent] = msgspec.field(default_factory=list)


QUARANTINE_SHOWN = 10
"""Quarantined events listed per read model in its status (the newest; `quarantined` counts them all)."""

_QUARANTINE_COLUMNS = "projector, position, originator_id, originator_version, topic, error, quarantined_at"


async def projector_status(conn: psycopg.AsyncConnection[Any], max_notification_id: int) -> list[ProjectorStatus]:
    """Every read model's version, position and lag behind `max_notification_id`, its failure and quarantine."""
    cur = await conn.execute(
        f"SELECT name, coalesce(version, 0), position, last_error, failing_since FROM {TRACKING} ORDER BY name"
    )
    tracked = await cur.fetchall()
    counts = await quarantine_counts(conn)
    cur = await conn.execute(
        f"SELECT {_QUARANTINE_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY projector "
        f"ORDER BY position DESC) AS n FROM {QUARANTINE}) q WHERE n <= %s ORDER BY projector, position",
        (QUARANTINE_SHOWN,),
    )
    shown: dict[str, list[QuarantinedEvent]] = {}
    for record in await cur.fetchall():
        event = _quarantined(record)
        shown.setdefault(event.projector, []).append(event)
    return [
        ProjectorStatus(
            name=name,
            version=version,
            position=position,
            lag=max(max_notification_id - position, 0),
            last_error=last_error,
            failing_since=failing_since,
            state=_state(last_error, counts.get(name, 0)),
            quarantined=counts.get(name, 0),
            quarantine=shown.get(name, []),
        )
        for name, version, position, last_error, failing_since in tracked
    ]


async def projector_position(conn: psycopg.AsyncConnection[Any], name: str) -> int | None:
    """The position in the log read model `name` has applied up to, or None before it first ran."""
    cur = await conn.execute(f"SELECT position FROM {TRACKING} WHERE name = %s", (name,))
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def database_size(conn: psycopg.AsyncConnection[Any]) -> int:
    """Bytes the whole database takes on disk: the event store, the read models and operational state."""
    cur = await conn.execute("SELECT pg_database_size(current_database())")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def quarantine_counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """How many events each read model has quarantined (read models with none are left out)."""
    cur = await conn.execute(f"SELECT projector, count(*) FROM {QUARANTINE} GROUP BY projector")
    return {name: int(count) for name, count in await cur.fetchall()}


async def projector_states(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    """Each read model's `state` alone (`current`, `failing`, `degraded`), for health checks."""
    counts = await quarantine_counts(conn)
    cur = await conn.execute(f"SELECT name, last_error FROM {TRACKING} ORDER BY name")
    return {name: _state(last_error, counts.get(name, 0)) for name, last_error in await cur.fetchall()}


def _state(last_error: str | None, quarantined: int) -> str:
    if last_error is not None:
        return "failing"
    return "degraded" if quarantined else "current"


def _quarantined(record: Sequence[Any]) -> QuarantinedEvent:
    projector, position, originator_id, version, topic, error, at = record
    return QuarantinedEvent(
        projector=projector, position=position, originator_id=originator_id, originator_version=version,
        topic=topic, error=error, quarantined_at=at,
    )


def quarantined_events(conn: psycopg.Connection[Any], names: Collection[str] | None = None) -> list[QuarantinedEvent]:
    """The events quarantined by `names` (every read model by default), in read model and log order."""
    where, params = ("", ()) if names is None else (" WHERE projector = ANY(%s)", (list(names),))
    records = conn.execute(f"SELECT {_QUARANTINE_COLUMNS} FROM {QUARANTINE}{where} ORDER BY projector, position",
                           params).fetchall()  # fmt: skip
    return [_quarantined(record) for record in records]
