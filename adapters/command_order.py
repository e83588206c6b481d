"""The order of control requests per device, shared by every executor process (`wl_ops.command_queue`).

JetStream hands the requests of the executors' one durable consumer out in the order they were
stored, but two executors may each take one request for the same device and run them side by
side, or the later first. So an executor takes its requests (the fetch) while it holds one
advisory lock, and writes down, before letting go of it, each request's stream sequence and
device: whatever another executor fetches after that sees every earlier request written down.
A request may run once no earlier request of its device is left in the queue; it leaves the
queue when its command is settled. A redelivered request keeps its place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from adapters.schemas import OPS_SCHEMA, create_ops_schema

__all__ = ["DeviceOrder", "Queued"]

T = TypeVar("T")

QUEUE = sql.Identifier(OPS_SCHEMA, "command_queue")
FETCH_LOCK = "wattledger-executor-fetch"


class Queued(msgspec.Struct, frozen=True, kw_only=True):
    """One control request as the queue knows it: its place in the stream, its command and its device."""

    sequence: int
    command_id: UUID
    device_id: UUID


class DeviceOrder:
    """The per-device queue of control requests in PostgreSQL, over a pool of the executor's process."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        self._pool = pool
        self._prepared = False

    async def _prepare(self) -> None:
        if self._prepared:
            return
        async with self._pool.connection() as conn, conn.transaction():
            await create_ops_schema(conn)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {queue} ("
                    " command_id uuid PRIMARY KEY, device_id uuid NOT NULL, sequence bigint NOT NULL)"
                ).format(queue=QUEUE)
            )
            await conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS command_queue_device ON {queue} (device_id, sequence)").format(
                    queue=QUEUE
                )
            )
        self._prepared = True

    async def take(self, fetch: Callable[[], Awaitable[T]], queued: Callable[[T], Sequence[Queued]]) -> T:
        """Run `fetch` under the executors' one fetch lock and write down what it took before the lock goes.

        Whatever `fetch` raises comes through unchanged and writes nothing; a fault of the database
        (psycopg's errors, the pool's time-out) reaches the caller, and what was fetched is then
        delivered again after its ack wait.
        """
        await self._prepare()
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (FETCH_LOCK,))
            taken = await fetch()
            rows = [(q.command_id, q.device_id, q.sequence) for q in queued(taken)]
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        sql.SQL(
                            "INSERT INTO {queue} (command_id, device_id, sequence) VALUES (%s, %s, %s)"
                            " ON CONFLICT (command_id) DO NOTHING"
                        ).format(queue=QUEUE),
                        rows,
                    )
        return taken

    async def earlier(self, request: Queued) -> list[UUID]:
        """The commands of the same device still queued ahead of `request`, oldest first."""
        await self._prepare()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT command_id FROM {queue} WHERE device_id = %s AND sequence < %s ORDER BY sequence"
                ).format(queue=QUEUE),
                (request.device_id, request.sequence),
            )
            return [row[0] for row in await cur.fetchall()]

    async def leave(self, command_id: UUID) -> None:
        """Take a settled command out of the queue."""
        await self._prepare()
        async with self._pool.connection() as conn:
            await conn.execute(sql.SQL("DELETE FROM {queue} WHERE command_id = %s").format(queue=QUEUE), (command_id,))
