"""Last activity of sessions and last use of API keys: two plain tables, their creation, and their writer.

Per-request authentication notes them (through `IdentityReadModels` in
`projections.identity`, whose queries join them), not events, so they are no read
model: no replay or rebuild touches them. They keep their place in `wl_auth`, beside
the secrets, and their names, so a database set up by an earlier release keeps its
rows; `create_activity_tables` creates them if missing, safely from several processes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.identity import AUTH_SCHEMA, create_auth_schema

__all__ = [
    "ACTIVITY_RESOLUTION",
    "KEY_USAGE_TABLE",
    "SESSION_ACTIVITY_TABLE",
    "ActivityNotes",
    "create_activity_tables",
]

KEY_USAGE_TABLE = f"{AUTH_SCHEMA}.key_usage"
SESSION_ACTIVITY_TABLE = f"{AUTH_SCHEMA}.session_activity"

ACTIVITY_RESOLUTION = timedelta(minutes=1)
"""Last activity and last use are written at most this often per session or key."""

ACTIVITY_DDL = f"""
CREATE TABLE IF NOT EXISTS {KEY_USAGE_TABLE} (
    key_id uuid PRIMARY KEY,
    last_used_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {SESSION_ACTIVITY_TABLE} (
    session_id uuid PRIMARY KEY,
    last_activity timestamptz NOT NULL
);
"""


async def create_activity_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create both tables (and `wl_auth`) if missing, under the lock every process creating `wl_auth` takes."""
    async with conn.transaction():
        await create_auth_schema(conn)
        await conn.execute(ACTIVITY_DDL)


class ActivityNotes:
    """Notes when a session was last active and a key last used, at most once per ACTIVITY_RESOLUTION each.

    This process skips the write when it wrote recently, and the statement itself changes
    nothing younger than that, whichever process asks.
    """

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], *, remember: int = 10_000) -> None:
        self.pool = pool
        self._remember = remember
        self._noted: dict[UUID, datetime] = {}

    async def session(self, session_id: UUID, at: datetime) -> None:
        await self._note(SESSION_ACTIVITY_TABLE, "session_id", "last_activity", session_id, at)

    async def key(self, key_id: UUID, at: datetime) -> None:
        await self._note(KEY_USAGE_TABLE, "key_id", "last_used_at", key_id, at)

    async def _note(self, table: str, key: str, column: str, ident: UUID, at: datetime) -> None:
        last = self._noted.get(ident)
        if last is not None and at - last < ACTIVITY_RESOLUTION:
            return
        if len(self._noted) >= self._remember:
            self._noted.clear()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"INSERT INTO {table} AS t ({key}, {column}) VALUES (%s, %s) ON CONFLICT ({key}) DO UPDATE "
                f"SET {column} = EXCLUDED.{column} WHERE t.{column} <= EXCLUDED.{column} - %s RETURNING {column}",
                (ident, at, ACTIVITY_RESOLUTION),
            )
            row = await cur.fetchone()
            if row is None:
                # Another process noted it less than a minute ago: remember its time, not ours.
                cur = await conn.execute(f"SELECT {column} FROM {table} WHERE {key} = %s", (ident,))
                row = await cur.fetchone()
        self._noted[ident] = row[0] if row is not None else at
