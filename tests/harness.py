"""The harness for tests that run WattLedger or its parts against real servers.

Test files import its helpers. Its fixtures (`database_url`, `app`, `settings`, `runtime`,
`fleet`) reach every test through `pytest_plugins` in tests/conftest.py; the signed-in clients
are fixtures of the e2e conftest. The fakes that need no server are in tests/kit.py.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import queue
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import msgspec
import psycopg
import pytest
import uvicorn
from litestar import Litestar
from psycopg import sql
from psycopg.rows import dict_row

from adapters.bus import StreamConfig
from adapters.emulator import EmulatedDevice, EmulatorFleet
from adapters.eventstore import PollResult, WattLedger, ensure_events_schema, store_env
from adapters.executor import CommandExecutor
from adapters.identity import Argon2Hasher
from api.app import create_app
from domain.device import Device
from domain.ports import Clock
from domain.readings import DeviceSnapshot, OutletReading
from infra.bootstrap import Runtime, _QuietServer, cancel_all, open_runtime
from infra.settings import Settings
from projections.audit import AuditProjector
from projections.chain import ChainProjector, Verification, verify
from projections.engine import ProjectionEngine
from projections.tables import READ_SCHEMA, Table
from tests.kit import eventually, seed_device, seed_polls

ADMIN = "root"
ADMIN_PASSWORD = "Admin-passphrase-4-tests"
VIEWER, VIEWER_PASSWORD = "vera", "Views-the-plugs-42"
OPERATOR, OPERATOR_PASSWORD = "olga", "Operates-the-plugs-42"
BASE_URL = "http://wattledger.test"
WAIT_S = 15.0


# ---- databases ----


def _with_dbname(url: str, dbname: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(url)
    parts["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


class _Drops:
    """Test databases to drop, dropped one at a time by a thread beside the tests.

    A drop waits for the server's checkpoint (0.1 to 2 s); the next test need not wait for it.
    `drain()` waits until every queued drop is done: before a server the tests started is
    stopped, and at exit."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, admin_url: str, name: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="test-database-drops", daemon=True)
                self._thread.start()
        self._queue.put((admin_url, name))

    def drain(self) -> None:
        self._queue.join()

    def _run(self) -> None:
        while True:
            admin_url, name = self._queue.get()
            try:
                drop_database(admin_url, name)
            except (psycopg.Error, OSError) as exc:
                print(f"test database {name} not dropped: {exc}", file=sys.stderr)
            finally:
                self._queue.task_done()


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


DROPS = _Drops()
atexit.register(DROPS.drain)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server of `admin_url`, yield its URL, drop it afterwards
    (beside the next tests: see `_Drops`)."""
    name = f"wl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(admin_url, name)
    finally:
        DROPS.put(admin_url, name)


@pytest.fixture
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A new empty database for one test."""
    with fresh_database(server_urls[0]) as url:
        yield url


@contextmanager
def ledger(database_url: str) -> Iterator[WattLedger]:
    """The event store on a database (its schema made if missing), closed afterwards."""
    ensure_events_schema(database_url)
    application = WattLedger(store_env(database_url))
    try:
        yield application
    finally:
        application.close()


@pytest.fixture
def app(database_url: str) -> Iterator[WattLedger]:
    """The event store on this test's database."""
    with ledger(database_url) as application:
        yield application


# ---- the runtime: the whole process in-test ----


@pytest.fixture
def settings(tmp_path: Path, stream_config: StreamConfig) -> Settings:
    return Settings(
        data_dir=tmp_path,
        polling_interval=1.0,
        poll_timeout=2.0,
        offline_after=2,
        discovery_target="127.0.0.1",
        stream_name=stream_config.name,
        subject_prefix=stream_config.subject_prefix,
        # Tests send far more than 100 requests a minute from one address; the rate-limit tests turn them on.
        rate_limits=False,
    )


@pytest.fixture
async def runtime(settings: Settings, database_url: str, nats_url: str, clock: Clock) -> AsyncIterator[Runtime]:
    """Real PostgreSQL and JetStream; passwords hashed with argon2 at a low cost (the CLI tests run the
    production cost): every test has its own database, so each signs in anew."""
    async with open_runtime(settings, database_url, nats_url) as rt:
        rt.identity.hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
        rt.clock = clock
        yield rt


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatorFleet]:
    async with EmulatorFleet(["HS110", "KP115", "HS100", "HS300", "KP303"], host="127.0.0.1", port=0,
                             speed=120.0, seed=11) as devices:
        yield devices


@asynccontextmanager
async def background(runtime: Runtime, *, poll: bool = True) -> AsyncIterator[None]:
    """Relay, projectors and (optionally) the poller running beside the test."""
    runtime.wakers += [runtime.relay.wake, runtime.engine.wake]
    tasks = [
        asyncio.create_task(runtime.relay.run()),
        asyncio.create_task(runtime.engine.run(poll_interval=0.2)),
    ]
    if poll:
        tasks.append(asyncio.create_task(runtime.poller().run()))
    try:
        yield
    finally:
        await cancel_all(tasks)


@asynccontextmanager
async def executing(runtime: Runtime, *, ack_wait: float = 30.0) -> AsyncIterator[CommandExecutor]:
    """A command executor beside the test (on the test's durable consumer)."""
    executor = CommandExecutor(
        runtime.js, runtime.control(), stream=runtime.stream, ack_wait=ack_wait, on_saved=runtime.saved
    )
    task = asyncio.create_task(executor.run())
    try:
        yield executor
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---- clients ----


class SignedIn(msgspec.Struct, kw_only=True):
    """What a sign-in answered, and the client that now carries its access token."""

    user_id: UUID
    session_id: UUID
    access_token: str
    refresh_token: str


def http_client(app: Litestar, *, headers: dict[str, str] | None = None, **options: Any) -> httpx.AsyncClient:
    """The app through an HTTP client on the test's own event loop (the app's pools live there)."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers, **options)


async def log_in(http: httpx.AsyncClient, username: str, password: str, **extra: Any) -> SignedIn:
    response = await http.post("/api/auth/login", json={"username": username, "password": password, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    return SignedIn(
        user_id=UUID(body["user"]["id"]), session_id=UUID(body["session"]["session_id"]),
        access_token=body["access_token"], refresh_token=body["refresh_token"],
    )  # fmt: skip


async def set_up_and_log_in(http: httpx.AsyncClient) -> SignedIn:
    """First-run setup, then sign-in as that administrator; `http` carries the token from then on."""
    setup = await http.post("/api/auth/setup", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert setup.status_code == 201, setup.text
    admin = await log_in(http, ADMIN, ADMIN_PASSWORD)
    http.headers["Authorization"] = f"Bearer {admin.access_token}"
    return admin


def bearer(signed_in: SignedIn) -> dict[str, str]:
    return {"Authorization": f"Bearer {signed_in.access_token}"}


async def create_user(client: httpx.AsyncClient, username: str, password: str, role: str) -> dict[str, Any]:
    response = await client.post("/api/users", json={"username": username, "password": password, "role": role})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and body["detail"]
    return str(body["error_code"])


async def all_pages(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Follow `Link: rel="next"` to the end; every page must also carry `next_cursor`."""
    items: list[dict[str, Any]] = []
    response = await client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["events"]
        if body["next_cursor"] is None:
            assert "link" not in response.headers
            return items
        link = response.headers["link"]
        assert link.endswith('>; rel="next"') and body["next_cursor"] in link
        target = urlsplit(link[1 : link.index(">")])
        response = await client.get(f"{target.path}?{target.query}")


# ---- devices ----


def free_port() -> int:
    """A loopback TCP port nothing listens on now: free to serve on, refused to connect to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def emulated(fleet: EmulatorFleet, model: str) -> tuple[EmulatedDevice, str]:
    return next((device, server.address) for device, server in fleet if device.profile_name == model)


async def add(client: httpx.AsyncClient, address: str) -> str:
    response = await client.post("/api/devices/manual", json={"ip": address})
    assert response.status_code == 201, response.text
    return str(response.json()["device_id"])


# ---- the command line ----


def cli_env(database_url: str, nats_url: str, stream: StreamConfig, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "WATTLEDGER_STREAM": stream.name,
        "WATTLEDGER_SUBJECT_PREFIX": stream.subject_prefix,
        "WATTLEDGER_DATA_DIR": str(data_dir),
    }


def wattledger(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


# ---- the app served on loopback ----


class LiveServer(msgspec.Struct, kw_only=True):
    """The app served on a free loopback port, with this process's fan-out started."""

    port: int
    runtime: Runtime

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def serve_live(runtime: Runtime, **settings: Any) -> AsyncIterator[LiveServer]:
    """Start the fan-out and uvicorn on 127.0.0.1 (random port) on the test's loop; stop both after.

    Runs beside `background`: waits until the devices read model holds everything stored so far.
    """
    runtime.settings = msgspec.structs.replace(runtime.settings, **settings)
    if runtime.fanout is not None and not runtime.fanout.running:
        runtime.fanout = None  # built before these settings (an earlier client's app): take them now
    newest = await asyncio.to_thread(runtime.app.recorder.max_notification_id) or 0
    assert await runtime.services().reads.wait_projected(newest, timeout=WAIT_S)
    fanout = runtime.live_fanout()
    await fanout.start()
    config = uvicorn.Config(create_app(runtime.services()), host="127.0.0.1", port=0, log_config=None,
                            access_log=False, lifespan="off")  # fmt: skip
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield LiveServer(port=port, runtime=runtime)
    finally:
        await fanout.stop()
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


# ---- stored histories several test files read ----

HEATER = DeviceSnapshot(
    alias="Heater", model="HS110", device_type="plug", mac="AA:01", firmware="1", is_on=True, has_emeter=True,
    power_w=900.0, voltage_v=231.0, current_a=3.9, total_wh=50.0, rssi=-45,
)


async def seed_heater(runtime: Runtime, actor: str, readings: int = 5) -> Any:
    """A heater added by `actor` with `readings` more readings from the poller; returns its id."""
    start = datetime(2026, 5, 4, 10, 0, tzinfo=timezone.utc)
    device = await asyncio.to_thread(seed_device, runtime.app, "10.2.0.1", HEATER, measured_at=start, actor=actor)
    for i in range(readings):
        await asyncio.to_thread(seed_polls, runtime.app, [
            PollResult(device_id=device, measured_at=start + timedelta(minutes=i + 1), snapshot=HEATER)
        ], actor="system:poller")  # fmt: skip
    return device


def metered_plug(power: float) -> DeviceSnapshot:
    """A plug drawing `power` watts, its counter at 1000 Wh plus as much."""
    return DeviceSnapshot(alias="plug", model="HS110", device_type="plug", mac="50:c7:bf:00:00:09", firmware="1.0",
                          is_on=True, has_emeter=True, power_w=power, voltage_v=230.0, current_a=0.1,
                          total_wh=1000.0 + power)  # fmt: skip


class AuditedStore:
    """An event store with the hash chain and the audit log projected, holding one kettle alice added."""

    since = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    kettle = DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac="AA:BB", firmware="1", is_on=True, has_emeter=True,
        power_w=1800.0, voltage_v=230.0, current_a=7.8, total_wh=1000.0, rssi=-50,
    )

    def __init__(self, url: str) -> None:
        ensure_events_schema(url)
        self.url = url
        self.app = WattLedger(store_env(url))
        self.engine = ProjectionEngine(self.app, url, [ChainProjector(), AuditProjector()])
        self.engine.setup()
        self.device = seed_device(self.app, "10.1.1.1", self.kettle, measured_at=self.since, actor="user:alice")

    def readings(self, count: int, start: int = 1) -> None:
        for i in range(count):
            seed_polls(self.app, [
                PollResult(device_id=self.device, measured_at=self.since + timedelta(minutes=start + i),
                           snapshot=self.kettle)
            ])  # fmt: skip

    def project(self) -> None:
        self.engine.catch_up_all()

    def sql(self, query: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def verify(self) -> Verification:
        with psycopg.connect(self.url) as conn:
            return verify(conn, batch=3)

    def close(self) -> None:
        self.engine.close()
        self.app.close()


# ---- the read-model engine's history ----

BERLIN_EVE = datetime(2026, 10, 24, 21, 45, tzinfo=timezone.utc)
"""A quarter of an hour before local midnight in Berlin, on the day its clocks go back."""


def lamp(total_wh: float | None, *, mac: str = "AA", power_w: float = 100.0, is_on: bool = True) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Lamp", model="HS110", device_type="plug", mac=mac, firmware="1", is_on=is_on, has_emeter=True,
        power_w=power_w, voltage_v=230.0, current_a=0.4, total_wh=total_wh, rssi=-40,
    )


def strip(totals: Sequence[float]) -> DeviceSnapshot:
    outlets = tuple(
        OutletReading(outlet_id=f"o{i}", index=i, alias=f"Plug {i}", is_on=True, power_w=10.0, total_wh=t)
        for i, t in enumerate(totals)
    )
    return DeviceSnapshot(
        alias="Strip", model="HS300", device_type="strip", mac="BB", firmware="1", is_on=True, has_emeter=True,
        power_w=10.0 * len(totals), total_wh=sum(totals), outlets=outlets,
    )


def seed_history(app: WattLedger) -> list[UUID]:
    """Plugs and a strip across a local midnight, with a reset, jitter, a late reading and a removal."""
    plugs = [seed_device(app, f"127.0.0.1:{10100 + i}", lamp(100.0 * i), measured_at=BERLIN_EVE) for i in range(3)]
    power_strip = seed_device(app, "127.0.0.1:10200", strip([10.0, 20.0]), measured_at=BERLIN_EVE)
    second_outlet = {10: 0.5, 22: 38.0}
    for minute in range(1, 40, 3):
        at = BERLIN_EVE + timedelta(minutes=minute)
        seed_polls(app, [PollResult(device_id=d, measured_at=at, snapshot=lamp(100.0 * i + minute * 1.5))
                         for i, d in enumerate(plugs)])
        totals = [10.0 + minute, second_outlet.get(minute, 20.0 + minute)]
        seed_polls(app, [PollResult(device_id=power_strip, measured_at=at, snapshot=strip(totals))])
    seed_polls(app, [PollResult(device_id=plugs[0], measured_at=BERLIN_EVE + timedelta(minutes=2), snapshot=lamp(5.0))])
    remove_device(app, plugs[2])
    return [*plugs, power_strip]


def remove_device(app: WattLedger, device_id: UUID) -> None:
    device = app.repository.get(device_id)
    assert isinstance(device, Device)
    device.remove(actor="t")
    app.save(device)


class TopicCount(msgspec.Struct, kw_only=True):
    topic: str
    events: int


class CountingProjector:
    """Counts the events it was given, by type: applying one twice or missing one shows."""

    version = 1

    def __init__(self, name: str, *, version: int = 1, calls: list[str] | None = None) -> None:
        self.name = name
        self.version = version
        self.table = Table(f"{READ_SCHEMA}.test_counts_{name}", TopicCount, key="topic")
        self.tables = (self.table,)
        self.broken = False
        self.calls = calls if calls is not None else []
        self.before_apply: Callable[[], None] = lambda: None

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.calls.append(self.name)
        self.before_apply()
        counts = Counter(type(event).__qualname__ for event in events)
        cur.execute(self.table.select)
        for row in map(self.table.decode, cur.fetchall()):
            counts[row.topic] += row.events
        rows = [TopicCount(topic=topic, events=n) for topic, n in counts.items()]
        cur.executemany(self.table.upsert, [self.table.values(row) for row in rows])
        if self.broken:
            raise RuntimeError(f"{self.name} cannot project this")


def engine_for(app: WattLedger, database_url: str, *projectors: Any, **options: Any) -> ProjectionEngine:
    engine = ProjectionEngine(app, database_url, list(projectors), **options)
    engine.setup()
    return engine


async def projected_to(engine: ProjectionEngine, name: str, wanted: int, *, within: float = 30.0) -> int:
    """The read model's position once it reached `wanted` (at least 1)."""

    async def position() -> int | None:
        at = await asyncio.to_thread(engine.position, name)
        return at if at >= wanted else None

    position_reached: int = await eventually(position, within=within, what=f"{name} projected up to {wanted}")
    return position_reached


def table_rows(database_url: str, table: str, order: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def tracking(database_url: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in table_rows(database_url, f"{READ_SCHEMA}.projector_tracking", "name")}
