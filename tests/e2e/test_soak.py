"""`wattledger serve` stays up for forty seconds of trouble: a starved CPU, NATS stopped and restarted,
PostgreSQL ending every connection, while clients read and switch throughout.

The process runs as an operator runs it (a subprocess with emulated devices), against its own
NATS server (so it can be stopped) and a database of its own on the shared PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from psycopg import sql

from adapters.eventstore import EVENTS_SCHEMA, WattLedger, store_env
from adapters.relay import relay_status
from infra.embedded import EmbeddedNats
from infra.nats_auth import APP, READER, RELAY
from tests.harness import free_port
from tests.kit import eventually

POLL_S = 1
SOAK_S = 40
"""The whole run under a starved CPU: every fault falls within its first ~30 s, the rest is steady load after them."""
NATS_DOWN_S = 6
RECOVERY_S = 60
DEVICES = 5


@contextmanager
def busy_cores(count: int = 2) -> Iterator[None]:
    """`count` processes spinning on the CPU (bounded: each ends by itself after SOAK_S * 3 seconds)."""
    spin = f"import time\nend = time.monotonic() + {SOAK_S * 3}\nwhile time.monotonic() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=10)


@dataclass
class Answers:
    """Every answer the clients got: (monotonic time, method and route, status)."""

    seen: list[tuple[float, str, int]] = field(default_factory=list)

    def record(self, what: str, status: int) -> None:
        self.seen.append((time.monotonic(), what, status))

    def server_errors(self, outside: tuple[float, float]) -> list[tuple[float, str, int]]:
        low, high = outside
        return [a for a in self.seen if a[2] >= 500 and not low <= a[0] <= high]


@asynccontextmanager
async def serving(tmp_path: Path, database_url: str, nats: EmbeddedNats, port: int
                  ) -> AsyncIterator[subprocess.Popen[bytes]]:  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats.url_for(APP),
        "WATTLEDGER_NATS_RELAY_URL": nats.url_for(RELAY),
        "WATTLEDGER_DATA_DIR": str(tmp_path / "data"),
        "WATTLEDGER_RATE_LIMITS": "false",
        "WATTLEDGER_POLL_TIMEOUT": "2",
        "WATTLEDGER_OFFLINE_AFTER": "30",
    }
    command = [sys.executable, "-m", "infra.cli", "serve", "--demo", "--polling-interval", str(POLL_S),
               "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


# The server may be restarting meanwhile: a request that fails is no answer yet.
until_up = partial(eventually, every=0.5, ignoring=(httpx.HTTPError, OSError))


async def end_every_connection(database_url: str) -> int:
    """Terminate every other connection to this database; returns how many were ended."""
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def clients(http: httpx.AsyncClient, answers: Answers, devices: list[str], stop: asyncio.Event) -> None:
    """Read and switch until `stop`: device list, one device, system status, a toggle."""
    turn = 0
    while not stop.is_set():
        device = devices[turn % len(devices)]
        for method, route, body in (
            ("GET", "/api/devices", None),
            ("GET", f"/api/device/{device}", None),
            ("GET", "/api/system/status", None),
            ("POST", f"/api/device/{device}/control?wait=false", {"action": "toggle"}),
        ):
            try:
                response = await http.request(method, route, json=body)
                answers.record(f"{method} {route}", response.status_code)
            except httpx.HTTPError as exc:
                answers.record(f"{method} {route} {type(exc).__name__}", 599)
        turn += 1
        await asyncio.sleep(0.2)


@pytest.mark.embedded
async def test_serve_stays_up_through_cpu_starvation_a_nats_restart_and_lost_connections(
    tmp_path: Path, database_url: str
) -> None:
    # NATS with authorization, as `serve` starts it: the relay alone may publish events.
    nats_server = EmbeddedNats(tmp_path / "nats", port=0)
    nats_url = await asyncio.to_thread(nats_server.start)
    nats_server.port = int(nats_url.rsplit(":", 1)[1])
    port = free_port()
    answers = Answers()
    outage = (float("inf"), float("-inf"))
    try:
        async with serving(tmp_path, database_url, nats_server, port) as process, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60
        ) as http:
            await until_up(lambda: _status(http, "/api/health", 200), within=120, what="the API answering")
            assert (await http.post("/api/auth/setup", json={"username": "root", "password": "Soak-test-passphrase-1"})).status_code == 201
            login = await http.post("/api/auth/login", json={"username": "root", "password": "Soak-test-passphrase-1"})
            http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            listed = await until_up(lambda: _devices(http), within=60, what="the demo devices listed")
            addresses = [d["device_ip"] for d in listed]

            stop = asyncio.Event()
            began = time.monotonic()
            with busy_cores():
                load = asyncio.create_task(clients(http, answers, addresses, stop))
                ended = 0
                for _ in range(3):
                    await asyncio.sleep(4)
                    ended += await end_every_connection(database_url)
                down = time.monotonic()
                await asyncio.to_thread(nats_server.stop)
                await asyncio.sleep(NATS_DOWN_S)
                await asyncio.to_thread(nats_server.start)
                outage = (down, time.monotonic() + 15)
                for _ in range(3):
                    await asyncio.sleep(4)
                    ended += await end_every_connection(database_url)
                await asyncio.sleep(max(0.0, SOAK_S - (time.monotonic() - began)))
                stop.set()
                await load
            assert process.poll() is None, "serve exited during the soak"
            assert ended >= 6, f"only {ended} connections were ended"

            health = await until_up(lambda: _status(http, "/api/health", 200), within=RECOVERY_S, what="health 200")
            assert health.json()["status"] in ("healthy", "degraded")
            fresh = await until_up(lambda: _all_fresh(http, len(addresses)), within=RECOVERY_S, what="fresh readings")
            assert len(fresh) == len(addresses)
            switched = await until_up(
                lambda: _switched(http, addresses[0]), within=RECOVERY_S, what="control after the NATS outage"
            )
            assert switched["status"] == "succeeded", switched
            assert process.poll() is None
        assert process.returncode == 0, "serve did not stop cleanly on SIGTERM"
        stored, last_id = await _stored_events(database_url)
        in_stream = await _relayed(tmp_path, database_url, nats_server, last_id)
        assert in_stream == stored, f"JetStream holds {in_stream} messages for {stored} stored events"
    finally:
        await asyncio.to_thread(nats_server.stop)
    errors = answers.server_errors(outside=outage)
    assert not errors, f"5xx outside the NATS outage: {errors[:10]}"
    assert len({a[1] for a in answers.seen if a[2] < 300}) >= 4, "the clients got too few answers to mean anything"
    lines = (tmp_path / "serve.log").read_text(errors="replace").splitlines()
    tracebacks = [lines[max(n - 1, 0)] for n, line in enumerate(lines) if line.startswith("Traceback")]
    assert not tracebacks, f"{len(tracebacks)} tracebacks logged, after: {tracebacks[:5]}"


async def _status(http: httpx.AsyncClient, route: str, wanted: int) -> httpx.Response | None:
    response = await http.get(route)
    return response if response.status_code == wanted else None


async def _devices(http: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    response = await http.get("/api/devices")
    if response.status_code != 200:
        return None
    listed: list[dict[str, Any]] = response.json()
    return listed if len(listed) >= DEVICES else None


async def _all_fresh(http: httpx.AsyncClient, count: int) -> list[str] | None:
    """The devices with a reading from the last few poll intervals, once all have one."""
    response = await http.get("/api/devices")
    if response.status_code != 200:
        return None
    recent = datetime.now(timezone.utc) - timedelta(seconds=10 * POLL_S)
    fresh = [d["device_ip"] for d in response.json()
             if d.get("last_seen") and datetime.fromisoformat(d["last_seen"].replace("Z", "+00:00")) >= recent]  # fmt: skip
    return fresh if len(fresh) == count else None


async def _switched(http: httpx.AsyncClient, device: str) -> dict[str, Any] | None:
    response = await http.post(f"/api/device/{device}/control", params={"wait": "true"}, json={"action": "toggle"})
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body if body.get("status") == "succeeded" else None


async def _stored_events(database_url: str) -> tuple[int, int]:
    """How many events the store holds, and the last notification id (ids can have holes)."""

    def count() -> tuple[int, int]:
        app = WattLedger(store_env(database_url, pool_size=1))
        try:
            table = getattr(app.recorder, "events_table_name")
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    sql.SQL("SELECT count(*), coalesce(max(notification_id), 0) FROM {}").format(
                        sql.Identifier(EVENTS_SCHEMA, table)
                    )
                ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
        finally:
            app.close()

    return await asyncio.to_thread(count)


async def _relayed(tmp_path: Path, database_url: str, nats_server: EmbeddedNats, last_id: int) -> int:
    """Let a relay finish what the stopped process had not published, then count the stream's messages."""
    env = {**os.environ, "DATABASE_URL": database_url, "NATS_URL": nats_server.url_for(APP),
           "WATTLEDGER_NATS_RELAY_URL": nats_server.url_for(RELAY), "WATTLEDGER_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "relay.log"
    with log.open("wb") as output:
        relay = subprocess.Popen([sys.executable, "-m", "infra.cli", "relay"], env=env, stdout=output,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        try:
            async def caught_up() -> bool:
                async with await psycopg.AsyncConnection.connect(database_url) as conn:
                    status = await relay_status(conn, "WL_EVENTS", last_id)
                return status.lag == 0 and status.rejected == 0

            try:
                await until_up(caught_up, within=RECOVERY_S, what="the relay catching up")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the relay said:\n{log.read_text()[-3000:]}") from None
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=30)
    nc = await nats.connect(nats_server.url_for(READER))
    try:
        info = await nc.jetstream().stream_info("WL_EVENTS")
        return int(info.state.messages)
    finally:
        await nc.close()
