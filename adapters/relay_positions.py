"""Where the relay stands: its position per stream, and the messages refused for good.

Two tables, the relay's own operational state, in the `wl_ops` schema beside the pollers'
leases (not among the read models, which projectors alone write and rebuilds replace):
`relay_position` (one row per stream name: the last notification id known to be in the
stream) and `relay_rejected` (events JetStream refused for good, kept until a later pass
publishes them). Releases before this one kept them in the read models' schema `wl_read`:
`RelayPositions.create` moves them from there in place (`ALTER TABLE ... SET SCHEMA`), once,
under a lock, so a relay keeps its position across the upgrade. `relay_status` reads them for
`/api/system`, in either schema, so an API upgraded before its relay still reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.schemas import OPS_SCHEMA, create_ops_schema

__all__ = ["POSITION_TABLE", "REJECTED_TABLE", "Rejection", "RelayPositions", "RelayStatus", "relay_status"]

log = structlog.get_logger(__name__)

POSITION_TABLE = "relay_position"
REJECTED_TABLE = "relay_rejected"
_FORMER_SCHEMA = "wl_read"
"""Where earlier releases kept both tables (the read models' schema)."""


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """One event JetStream refused for good: it is in the event store but not in the stream."""

    notification_id: int
    subject: str
    error: str
    rejected_at: datetime


class RelayStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far the relay of one stream got.

    `lag` counts notification ids after `position` (holes in the ids included, so it is an
    upper bound on the events still to publish); `rejected` counts the events refused for
    good and missing from the stream, the most recent in log order in `last_rejections`.
    """

    stream: str
    position: int
    lag: int
    rejected: int
    last_rejections: list[Rejection]


def _table(name: str, schema: str = OPS_SCHEMA) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


async def _read_position(conn: psycopg.AsyncConnection[Any], stream_name: str, schema: str = OPS_SCHEMA) -> int:
    cur = await conn.execute(
        sql.SQL("SELECT position FROM {} WHERE stream_name = %s").format(_table(POSITION_TABLE, schema)),
        (stream_name,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _write_position(
    conn: psycopg.AsyncConnection[Any], stream_name: str, position: int, *, forward_only: bool
) -> None:
    """Set a stream's position; with `forward_only` a lower one than stored changes nothing."""
    table = _table(POSITION_TABLE)
    new: sql.Composable = sql.SQL("EXCLUDED.position")
    if forward_only:
        new = sql.SQL("GREATEST({}.position, EXCLUDED.position)").format(table)
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (stream_name, position, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (stream_name) DO UPDATE SET position = {}, updated_at = now()"
        ).format(table, new),
        (stream_name, position),
    )


async def relay_status(
    conn: psycopg.AsyncConnection[Any], stream_name: str, max_notification_id: int, *, last: int = 5
) -> RelayStatus:
    """The relay's position, lag behind `max_notification_id` and refused messages for one stream.

    Reads only; before any relay has run (no tables yet) the position is 0 and nothing is rejected.
    """
    names = [f"{schema}.{table}" for table in (POSITION_TABLE, REJECTED_TABLE) for schema in (OPS_SCHEMA, _FORMER_SCHEMA)]
    cur = await conn.execute("SELECT " + ", ".join(["to_regclass(%s) IS NOT NULL"] * len(names)), names)
    found: Any = await cur.fetchone()
    positions = OPS_SCHEMA if found[0] else _FORMER_SCHEMA if found[1] else None
    rejected_in = OPS_SCHEMA if found[2] else _FORMER_SCHEMA if found[3] else None
    position = rejected = 0
    rejections: list[Rejection] = []
    if positions is not None:
        position = await _read_position(conn, stream_name, positions)
    if rejected_in is not None:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE stream_name = %s").format(_table(REJECTED_TABLE, rejected_in)),
            (stream_name,),
        )
        counted: Any = await cur.fetchone()
        rejected = int(counted[0])
        cur = await conn.execute(
            sql.SQL(
                "SELECT notification_id, subject, error, rejected_at FROM {} "
                "WHERE stream_name = %s ORDER BY notification_id DESC LIMIT %s"
            ).format(_table(REJECTED_TABLE, rejected_in)),
            (stream_name, last),
        )
        rejections = [
            Rejection(notification_id=int(r[0]), subject=r[1], error=r[2], rejected_at=r[3])
            for r in await cur.fetchall()
        ]
    return RelayStatus(
        stream=stream_name,
        position=position,
        lag=max(0, max_notification_id - position),
        rejected=rejected,
        last_rejections=rejections,
    )


class RelayPositions:
    """The relay's two tables for one stream, over the relay's connection pool (autocommit)."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], stream_name: str) -> None:
        self._pool = pool
        self._stream_name = stream_name

    async def position(self) -> int:
        """The last notification id known to be in the stream (0: none)."""
        async with self._pool.connection() as conn:
            return await _read_position(conn, self._stream_name)

    async def status(self, max_notification_id: int, *, last: int = 5) -> RelayStatus:
        async with self._pool.connection() as conn:
            return await relay_status(conn, self._stream_name, max_notification_id, last=last)

    async def reset(self, position: int) -> None:
        """Set the position to `position`, back or forward."""
        async with self._pool.connection() as conn:
            await _write_position(conn, self._stream_name, position, forward_only=False)

    async def save_progress(self, first: int, position: int, refused: Sequence[tuple[int, str, str]]) -> None:
        """Save the position after a batch from `first`, and its refused messages
        (notification id, subject, error), in one transaction.

        Earlier rejections inside the batch's range are cleared first: those messages are
        in the stream now, or were refused again and are among `refused`.
        """
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE stream_name = %s AND notification_id BETWEEN %s AND %s"
                ).format(_table(REJECTED_TABLE)),
                (self._stream_name, first, position),
            )
            if refused:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        sql.SQL(
                            "INSERT INTO {} (stream_name, notification_id, subject, error, rejected_at) "
                            "VALUES (%s, %s, %s, %s, now())"
                        ).format(_table(REJECTED_TABLE)),
                        [(self._stream_name, *r) for r in refused],
                    )
            await _write_position(conn, self._stream_name, position, forward_only=True)
        log.debug("relay.position_saved", stream=self._stream_name, position=position, rejected=len(refused))

    async def create(self) -> None:
        """Create both tables if missing, after moving them from the former schema if they are there."""
        statements = [
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ("
                    "stream_name text PRIMARY KEY, "
                    "position bigint NOT NULL, "
                    "updated_at timestamptz NOT NULL DEFAULT now())").format(_table(POSITION_TABLE)),
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ("
                    "stream_name text NOT NULL, "
                    "notification_id bigint NOT NULL, "
                    "subject text NOT NULL, "
                    "error text NOT NULL, "
                    "rejected_at timestamptz NOT NULL DEFAULT now(), "
                    "PRIMARY KEY (stream_name, notification_id))").format(_table(REJECTED_TABLE)),
        ]  # fmt: skip
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    await create_ops_schema(conn)  # its lock also keeps two relays from moving a table at once
                    for table in (POSITION_TABLE, REJECTED_TABLE):
                        await _move_from_former_schema(conn, table)
                    for statement in statements:
                        await conn.execute(statement)
                return
            except psycopg.errors.UniqueViolation:
                # A process of an earlier release creating the schema without the lock, at the same moment.
                if attempt == 2:
                    raise


async def _move_from_former_schema(conn: psycopg.AsyncConnection[Any], table: str) -> None:
    """Move `table` from `wl_read` to `wl_ops` with its rows, unless it is already there.

    Found in both (a relay of an earlier release ran after the move), the former one is left
    as it is and named in a warning: nothing reads it, and its rows are not merged.
    """
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        (f"{_FORMER_SCHEMA}.{table}", f"{OPS_SCHEMA}.{table}"),
    )
    found: Any = await cur.fetchone()
    former, current = bool(found[0]), bool(found[1])
    if former and not current:
        await conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(_table(table, _FORMER_SCHEMA), sql.Identifier(OPS_SCHEMA))
        )
        log.info("relay.table_moved", table=table, schema=OPS_SCHEMA, former_schema=_FORMER_SCHEMA)
    elif former:
        log.warning("relay.former_table_left", table=f"{_FORMER_SCHEMA}.{table}", current=f"{OPS_SCHEMA}.{table}")
