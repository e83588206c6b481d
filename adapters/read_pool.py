"""The API's read pool (`ReadPool`): connections tested as they are handed out, and request reads in autocommit.

Built with its time-outs by `infra.pools.read_pool`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

__all__ = ["RECENTLY_USED_S", "ReadPool"]

RECENTLY_USED_S = 2.0
"""A connection `ReadPool.reading` hands out without testing it first: one returned this recently."""


class ReadPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """The API's read pool: every connection is tested as it is handed out, and a dead one is
    dropped for the next at once.

    psycopg_pool's own `check` runs the same test but sleeps 1 s, 2 s, 4 s... between failures,
    so after the server ended all the pool's connections a request waited seconds or timed out.

    `reading()` is the request path's way in: a connection in autocommit for reads (no `BEGIN`
    and `COMMIT` round trips around each use), tested only when it was not in use for
    RECENTLY_USED_S. A connection the server ended within that time fails its query instead: the
    HTTP layer repeats a read whose connection was lost (`api.app.RetryLostConnections`), after
    testing the pool's idle connections.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        return await self._tested(timeout, skip_recent=False)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned[conn] = time.monotonic()
        await super().putconn(conn)

    @asynccontextmanager
    async def reading(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for reads, in autocommit: each statement sees the data as committed when it
        starts, and nothing is committed or rolled back around the block. A block that needs one
        snapshot for several statements opens `conn.transaction()` itself."""
        conn = await self._tested(timeout, skip_recent=True)
        try:
            await conn.set_autocommit(True)
            yield conn
        finally:
            restored = False
            if not conn.broken and not conn.closed:
                with suppress(psycopg.Error):
                    await conn.set_autocommit(False)
                    restored = True
            if not restored:
                # Never back into the pool in autocommit: the other users of the pool rely on transactions.
                with suppress(psycopg.Error):
                    await conn.close()
            await self.putconn(conn)

    async def _tested(self, timeout: float | None, *, skip_recent: bool) -> psycopg.AsyncConnection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(self.max_size):
            conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            returned = self._returned.get(conn)
            if skip_recent and returned is not None and time.monotonic() - returned < RECENTLY_USED_S and not conn.broken:
                return conn
            try:
                await self.check_connection(conn)
            except psycopg.Error:
                await super().putconn(conn)
                continue
            return conn
        return await super().getconn(max(deadline - time.monotonic(), 0.0))
