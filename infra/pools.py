"""The connection pools a process opens: the API's read pool (`adapters.read_pool.ReadPool`) and the event
store's settings.

`read_pool` builds the read pool with its time-outs; `event_store_env` is the event store's
environment with its own pool's time-outs. Both are opened by `infra.bootstrap.open_runtime`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
from psycopg.types.json import set_json_loads

from adapters.eventstore import store_env
from adapters.read_pool import ReadPool

__all__ = [
    "READ_POOL_RECONNECT_S",
    "READ_POOL_TIMEOUT_S",
    "STORE_POOL_TIMEOUT_S",
    "ReadPool",
    "event_store_env",
    "read_pool",
]

READ_POOL_TIMEOUT_S = 5.0
# psycopg_pool retries a lost connection with growing pauses (1 s, 2 s, 4 s...) for this long, then
# connects again on demand: a short window lets the API notice a returning server within seconds.
READ_POOL_RECONNECT_S = 10.0
# The event store retries a failed call up to ten times itself, each waiting this long for a connection.
STORE_POOL_TIMEOUT_S = 2
def event_store_env(database_url: str) -> dict[str, str]:
    # Pre-ping off: psycopg_pool's check sleeps 1 s, 2 s, 4 s... between dead connections (five dead
    # ones took 7 s to get past), while the store's own retry drops one per attempt, 0.2 s apart.
    return {
        **store_env(database_url),
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_CONNECT_TIMEOUT": str(STORE_POOL_TIMEOUT_S),
    }


async def _decode_json_with_msgspec(conn: psycopg.AsyncConnection[Any]) -> None:
    """json and jsonb columns are decoded by msgspec, several times faster than the standard library's
    `json` on the read models' wide answers (a JSON value PostgreSQL stores is always valid for it)."""
    set_json_loads(msgspec.json.decode, context=conn)


def read_pool(database_url: str) -> ReadPool:
    """The API's read pool, not yet open: up to 8 connections, a request waits at most READ_POOL_TIMEOUT_S."""
    return ReadPool(
        database_url,
        configure=_decode_json_with_msgspec,
        min_size=1,
        max_size=8,
        open=False,
        name="wattledger-read",
        timeout=READ_POOL_TIMEOUT_S,
        reconnect_timeout=READ_POOL_RECONNECT_S,
    )
