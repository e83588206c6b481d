"""Lost and refused database connections, on the real PostgreSQL: clients see success or a 503, never a 500."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg import sql

from adapters.emulator import EmulatorFleet
from infra.bootstrap import Runtime
from tests.e2e.conftest import background

ROUNDS = 100
TERMINATE_OTHERS = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


@pytest.fixture
async def device_id(runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet) -> str:
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
    assert added.status_code == 201, added.text
    return str(added.json()["device_id"])


async def _terminate_repeatedly(database_url: str, stop: asyncio.Event) -> int:
    """End every other connection to the database twice a second; returns how many rounds ended any."""
    rounds = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while not stop.is_set():
            row = await (await conn.execute(TERMINATE_OTHERS)).fetchone()
            rounds += 1 if row and row[0] else 0
            await asyncio.sleep(0.5)
    return rounds


async def test_reads_succeed_while_the_database_keeps_ending_their_connections(
    client: httpx.AsyncClient, database_url: str, device_id: str
) -> None:
    paths = ["/api/devices", "/api/system/status", f"/api/device/{device_id}", "/api/health"]
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []

    async def read_all(rounds: int) -> None:
        for _ in range(rounds):
            for path in paths:
                response = await client.get(path)
                statuses[path, response.status_code] += 1
                if response.status_code != 200:
                    failures.append(f"{path} -> {response.status_code} {response.text[:200]}")

    stop = asyncio.Event()
    terminator = asyncio.create_task(_terminate_repeatedly(database_url, stop))
    try:
        await asyncio.gather(*(read_all(ROUNDS) for _ in range(4)))
    finally:
        stop.set()
    rounds = await terminator
    assert rounds >= 10, f"connections were ended only {rounds} times; the test proves nothing"
    assert failures == [], f"{len(failures)} of {sum(statuses.values())}: {failures[:5]}"
    assert sum(statuses.values()) == 4 * ROUNDS * len(paths)


@pytest.fixture
async def refusing_database(database_url: str, server_urls: tuple[str, str]) -> AsyncIterator[None]:
    """The test's database refuses new connections and its open ones are ended; allowed again afterwards."""
    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    async with await psycopg.AsyncConnection.connect(server_urls[0], autocommit=True) as admin:

        async def allow(allowed: bool) -> None:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                    sql.Identifier(name), sql.SQL("true" if allowed else "false")
                )
            )

        await allow(False)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            yield
        finally:
            await allow(True)


async def test_unreachable_database_is_a_503_with_retry_after_and_health_recovers(
    client: httpx.AsyncClient, device_id: str, refusing_database: None, database_url: str, server_urls: tuple[str, str]
) -> None:
    devices = await client.get("/api/devices")
    assert devices.status_code == 503, devices.text
    assert devices.json()["error_code"] == "DATABASE_UNAVAILABLE" and devices.json()["status_code"] == 503
    assert int(devices.headers["retry-after"]) > 0
    one = await client.get(f"/api/device/{device_id}")
    assert (one.status_code, one.json()["error_code"]) == (503, "DATABASE_UNAVAILABLE")
    health = await client.get("/api/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert int(health.headers["retry-after"]) > 0

    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    async with await psycopg.AsyncConnection.connect(server_urls[0], autocommit=True) as admin:
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    deadline = time.monotonic() + 60
    while (health := await client.get("/api/health")).status_code != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert health.status_code == 200, health.text
    assert (await client.get("/api/devices")).status_code == 200
