"""Lost and refused database connections, on the real PostgreSQL: clients see success or a 503, never a 500."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import httpx
import psycopg
import pytest
from psycopg import sql

from adapters.emulator import EmulatorFleet
from infra.bootstrap import Runtime
from tests.harness import background
from tests.kit import eventually

TERMINATIONS = 12
"""Times the database must end the API's connections while clients read, for the test to prove anything."""
REQUESTS_BETWEEN = 32
"""Requests answered between two terminations: each reader's requests see one every two rounds or so,
while a request keeps room for the API's few quick retries (a request ended on every try fails)."""
MAX_REQUESTS = 2_000
READERS = 4
TERMINATE_OTHERS = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
HANG_S = 240.0


@pytest.fixture(autouse=True)
async def hang_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test here (its fixtures included) still running after HANG_S prints where every thread and every
    asyncio task waits, to the terminal past pytest's capture, and runs on: a hang seen once under load
    then names its cause."""
    terminal = _terminal(request.config)
    loop = asyncio.get_running_loop()
    faulthandler.dump_traceback_later(HANG_S, exit=False, file=terminal)
    tasks_dump = loop.call_later(HANG_S + 1.0, _print_tasks, terminal)
    try:
        yield
    finally:
        tasks_dump.cancel()
        faulthandler.cancel_dump_traceback_later()
        terminal.close()


def _terminal(config: pytest.Config) -> TextIO:
    """A copy of the process's real stderr (pytest captures file descriptor 2 while tests run)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return os.fdopen(os.dup(sys.__stderr__.fileno()), "w")
    with capture.global_and_fixture_disabled():
        return os.fdopen(os.dup(sys.__stderr__.fileno()), "w")


def _print_tasks(out: TextIO) -> None:
    tasks = asyncio.all_tasks()
    print(f"--- still running after {HANG_S:g} s: {len(tasks)} asyncio tasks, each down to what it awaits ---", file=out)
    for task in tasks:
        print(repr(task), file=out)
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                print(f"    awaiting {awaited!r}", file=out)
                break
            print(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}", file=out)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None) or getattr(awaited, "ag_await", None)
    out.flush()


@pytest.fixture
async def device_id(runtime: Runtime, client: httpx.AsyncClient, fleet: EmulatorFleet) -> str:
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
    assert added.status_code == 201, added.text
    return str(added.json()["device_id"])


async def test_reads_succeed_while_the_database_keeps_ending_their_connections(
    client: httpx.AsyncClient, database_url: str, device_id: str
) -> None:
    """Every REQUESTS_BETWEEN requests the database ends every connection of the API, while other
    requests are in flight, until it has done so TERMINATIONS times: however fast or slow the
    machine, the reads meet that many ended connections."""
    paths = ["/api/devices", "/api/system/status", f"/api/device/{device_id}", "/api/health"]
    failures: list[str] = []
    made = 0
    due, enough = asyncio.Event(), asyncio.Event()
    ended: list[int] = []

    async def read(path: str) -> None:
        nonlocal made
        response = await client.get(path)
        made += 1
        if response.status_code != 200:
            failures.append(f"{path} -> {response.status_code} {response.text[:200]}")
        if made % REQUESTS_BETWEEN == 0:
            due.set()

    async def read_until_enough() -> None:
        while not enough.is_set() and made < MAX_REQUESTS:
            for path in paths:
                await read(path)
        for path in paths:  # after the last termination too
            await read(path)

    async def terminate_while_reading() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            while len(ended) < TERMINATIONS:
                await due.wait()
                due.clear()
                row = await (await conn.execute(TERMINATE_OTHERS)).fetchone()
                if row and row[0]:
                    ended.append(int(row[0]))
        enough.set()

    terminator = asyncio.create_task(terminate_while_reading())
    try:
        await asyncio.gather(*(read_until_enough() for _ in range(READERS)))
    finally:
        if not terminator.done():
            terminator.cancel()
        await asyncio.wait({terminator})
    if not terminator.cancelled():
        terminator.result()
    assert len(ended) >= TERMINATIONS, f"{made} requests met only {len(ended)} rounds of ended connections"
    assert failures == [], f"{len(failures)} of {made}: {failures[:5]}"


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

    async def healthy() -> httpx.Response | None:
        health = await client.get("/api/health")
        return health if health.status_code == 200 else None

    await eventually(healthy, within=60, every=0.5, what="health 200 once connections are allowed again")
    assert (await client.get("/api/devices")).status_code == 200
