"""The read side as the HTTP handlers see it: the read-model pool, the event log's head, the zone
local days are counted in, and the one wait until a write shows in a read model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from adapters.eventlog import EventLog
from api.errors import connection_lost
from api.pending import note_pending
from domain.ports import Clock
from adapters.read_pool import ReadPool
from projections.tracking import projector_position


@dataclass(frozen=True, kw_only=True)
class ReadSide:
    """Where reads come from: `pool` for the read models, `log` for the event log's head and sections,
    `zone` and `clock` for local days ("today", "this month"); `on_saved` wakes this process's
    projectors and relay after a write."""

    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    log: EventLog
    zone: ZoneInfo
    clock: Clock
    on_saved: Callable[[], None]

    def reading(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """A read-model connection for a request's reads: `ReadPool.reading` (autocommit, no round trip
        before or after the block) when the pool is the API's read pool, else a plain pooled one."""
        if isinstance(self.pool, ReadPool):
            return self.pool.reading()
        return self.pool.connection()

    async def wait_projected(self, notification_id: int, *, projector: str = "devices", timeout: float = 3.0) -> bool:
        """Wait until `projector` has applied `notification_id` (read-your-writes for commands).

        False when `timeout` runs out first: the answer then names the read model in
        `X-Read-Models-Pending` (see `api.pending`)."""
        self.on_saved()
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            async with self.pool.connection() as conn:
                position = await projector_position(conn, projector)
            if position is not None and position >= notification_id:
                return True
            if time.monotonic() >= deadline:
                note_pending(projector, notification_id)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def wait_identity(self, *, timeout: float = 3.0) -> bool:
        """Wait until the identity read models hold everything stored so far, for the lists they answer.

        Authentication does not need it: it reads the event store, so an ended session, a revoked
        key or a deactivated user stops working as soon as the change is stored.
        """
        newest = await asyncio.to_thread(self.log.max_id)
        return await self.wait_projected(newest, projector="identity", timeout=timeout)

    async def newest(self) -> int:
        """The newest position in the event log (read in a thread: the store's API blocks)."""
        return await asyncio.to_thread(self.log.max_id)

    async def database_answers(self, *, timeout: float = 2.0, attempts: int = 3) -> bool:
        """Whether PostgreSQL answers a query now.

        A pooled connection that turns out dead is replaced and the query tried again. When the
        pool has none to give (it backs off between reconnects after an outage), the server is
        asked over a connection of its own, so the answer follows the server, not the pool.
        """
        for _ in range(attempts):
            try:
                async with self.pool.connection(timeout=timeout) as conn:
                    await conn.execute("SELECT 1")
                return True
            except PoolTimeout:
                break
            except (psycopg.Error, OSError) as exc:
                if not connection_lost(exc):
                    return False
        conninfo = self.pool.conninfo
        if not isinstance(conninfo, str):
            return False
        try:
            async with asyncio.timeout(timeout):
                conn = await psycopg.AsyncConnection.connect(conninfo)
        except (psycopg.Error, OSError, TimeoutError):
            return False
        await conn.close()
        return True

    async def drop_dead_connections(self) -> None:
        """Test the idle connections of both pools and replace the dead ones.

        Called after a request lost its connection: when the server ended one (restart,
        failover, `pg_terminate_backend`), it usually ended the others as well.
        """
        await self.pool.check()
        await asyncio.to_thread(self.log.check_connections)
