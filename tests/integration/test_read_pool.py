"""The API's read pool on the real PostgreSQL: request reads in autocommit, and connections the server ended."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.pq import TransactionStatus

import adapters.read_pool
from adapters.read_pool import ReadPool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[ReadPool]:
    opened = ReadPool(database_url, min_size=1, max_size=1, open=False, timeout=5.0)
    await opened.open(wait=True)
    try:
        yield opened
    finally:
        await opened.close()


async def end_its_connections(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_reads_open_no_transaction_and_the_pool_gets_its_connection_back_as_it_was(pool: ReadPool) -> None:
    async with pool.reading() as conn:
        await conn.execute("SELECT 1")
        assert conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    async with pool.connection() as conn:
        assert not conn.autocommit
        await conn.execute("SELECT 1")
        assert conn.info.transaction_status == TransactionStatus.INTRANS


async def test_a_connection_ended_after_a_pause_is_replaced_before_it_is_handed_out(
    pool: ReadPool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pool.reading() as conn:
        await conn.execute("SELECT 1")
    assert await end_its_connections(database_url) == 1
    monkeypatch.setattr(adapters.read_pool, "RECENTLY_USED_S", 0.0)  # the pause is over
    async with pool.reading() as conn:
        assert (await (await conn.execute("SELECT 42")).fetchone()) == (42,)


async def test_a_connection_ended_just_after_use_fails_its_read_and_is_not_kept(
    pool: ReadPool, database_url: str
) -> None:
    """Within RECENTLY_USED_S a connection is not tested first: the read fails as a lost connection
    (the HTTP layer repeats such a read), the error is the server's, and the pool replaces it."""
    async with pool.reading() as conn:
        await conn.execute("SELECT 1")
    assert await end_its_connections(database_url) == 1
    with pytest.raises(psycopg.OperationalError):
        async with pool.reading() as conn:
            await conn.execute("SELECT 1")
    async with pool.reading() as conn:
        assert (await (await conn.execute("SELECT 7")).fetchone()) == (7,)
    async with pool.connection() as conn:
        assert not conn.autocommit
