"""The composition root: builds every part from settings and wires the flow between them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import eventsourcing.persistence
import nats.errors
import psycopg
import structlog
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from adapters.bus import BusError, StreamConfig, connect_nats, ensure_stream
from adapters.fanout import DeviceEntry, FanOut, LiveOptions
from adapters.compliance import ComplianceJobs
from adapters.data_exports import DataExportJobs
from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env
from adapters.executor import CommandExecutor
from adapters.identity import (
    Argon2Hasher,
    PyotpVerifier,
    RandomSecrets,
    TokenService,
    open_secret_box,
)
from adapters.kasa_driver import KasaDriver
from adapters.nats_commands import CommandResponder
from adapters.leases import Leases
from adapters.poller import Poller
from adapters.ratelimits import PgRateCounters
from adapters.relay import Relay
from api.app import create_app
from api.ratelimit import EdgePolicy, RateLimits
from api.security import RefusalTally, summarise_every
from api.services import Services
from domain.authentication import authenticate_headers
from domain.config import ConfigValues
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers
from domain.export_handlers import ExportHandlers
from domain.compliance_handlers import ComplianceHandlers
from domain.handlers import CommandHandlers
from domain.identity_handlers import IdentityHandlers
from domain.ports import Clock
from domain.security import SecurityHandlers
from domain.usage import EnergySettings
from domain.text import escape_text
from infra.errors import InfraError
from infra.settings import Settings, mask_secrets, nats_endpoint, postgres_endpoint
from infra.supervisor import Supervisor, cancel_all, together
from projections.audit import AuditProjector
from projections.chain import ChainProjector, chain_link
from projections.commands import CommandsProjector, interrupted_commands
from projections.devices import TABLE as DEVICES_TABLE
from projections.devices import DevicesProjector, active_devices
from projections.energy import EnergyProjector
from projections.exports import ExportReadModel, ExportsProjector
from projections.engine import ProjectionEngine, Projector
from projections.identity import IdentityProjector, IdentityReadModels

log = structlog.get_logger(__name__)


def energy_rules(settings: Settings) -> EnergyRules:
    """The energy fold's rules for this installation's polling interval and meter limit."""
    return EnergyRules.for_polling_interval(settings.polling_interval, max_power_w=settings.max_power_w)


def all_projectors(settings: Settings) -> list[Projector]:
    rules = energy_rules(settings)
    return [
        DevicesProjector(settings.zone, rules), IdentityProjector(), CommandsProjector(), ChainProjector(),
        AuditProjector(), EnergyProjector(rules), ExportsProjector(),
    ]


def energy_settings(settings: Settings) -> EnergySettings:
    """The energy fold's rules and the session defaults the settings give."""
    return EnergySettings(
        rules=energy_rules(settings),
        session_threshold_w=settings.session_threshold_w,
        session_min_duration=timedelta(seconds=settings.session_min_duration),
    )


@dataclass
class Runtime:
    """Every long-lived object of one process; built by `open_runtime`, closed by it too."""

    settings: Settings
    database_url: str
    nats_url: str
    app: WattLedger
    engine: ProjectionEngine
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    driver: KasaDriver
    nc: Client
    js: JetStreamContext
    stream: StreamConfig
    relay: Relay
    identity: IdentityHandlers
    tokens: TokenService
    wakers: list[Callable[[], None]] = field(default_factory=list)
    rate_counters: PgRateCounters | None = None
    fanout: FanOut | None = None
    exports: DataExportJobs | None = None
    supervisor: Supervisor | None = None
    refusals: RefusalTally | None = None
    clock: Clock = field(default_factory=SystemClock)

    def saved(self) -> None:
        """Something was stored: nudge the in-process relay and projectors."""
        for wake in self.wakers:
            wake()

    async def known_devices(self) -> Sequence[tuple[UUID, str]]:
        async with self.read_pool.connection() as conn:
            return await active_devices(conn)

    def poller(self) -> Poller:
        """This process's poller, sharing the devices with other pollers through leases."""
        interval = self.settings.polling_interval
        leases = Leases(
            self.read_pool,
            devices_table=DEVICES_TABLE,
            ttl=max(3.0, min(self.settings.poll_lease, 3 * interval)),
        )
        return Poller(
            self.handlers(cache=True),
            self.driver,
            leases,
            interval=interval,
            timeout=self.settings.poll_timeout + 1.0,
            concurrency=self.settings.poll_concurrency,
            suspect_concurrency=self.settings.poll_suspect_concurrency,
            offline_after=self.settings.offline_after,
            grace=self.settings.poll_stop_grace,
            on_saved=self.saved,
        )

    def config_defaults(self) -> ConfigValues:
        """The system configuration before any change is recorded: this process's settings."""
        s = self.settings
        return ConfigValues(
            polling_interval=s.polling_interval, offline_after=s.offline_after,
            poll_timeout=s.poll_timeout, poll_concurrency=s.poll_concurrency,
        )  # fmt: skip

    def config(self) -> ConfigHandlers:
        return ConfigHandlers(StoreUnitOfWork(self.app), self.config_defaults())

    def control(self) -> ControlHandlers:
        """Control requests, their execution and device renames, over this process's store and driver."""
        return ControlHandlers(
            StoreUnitOfWork(self.app), self.driver, self.clock, self.config(),
            deadline_s=self.settings.control_deadline,
        )  # fmt: skip

    def executor(self) -> CommandExecutor:
        """The command executor, sharing the requests with every other executor through one durable consumer."""
        async def interrupted(attempted_before: datetime) -> list[UUID]:
            async with self.read_pool.connection() as conn:
                return await interrupted_commands(conn, attempted_before)

        # A live executor's device call ends within the driver's timeout, and its read-back within another.
        settle_after = 3 * (self.settings.poll_timeout + 1.0)
        return CommandExecutor(
            self.js, self.control(), stream=self.stream, ack_wait=self.settings.executor_ack_wait,
            on_saved=self.saved, interrupted=interrupted, settle_after=settle_after,
        )  # fmt: skip

    def handlers(self, *, cache: bool = False) -> CommandHandlers:
        """The write side over this process's store and driver; `cache` for a single writer (the poller)."""
        return CommandHandlers(StoreUnitOfWork(self.app, cache=cache), self.driver, self.clock)

    def responder(self) -> CommandResponder:
        """NATS request/reply commands (`<prefix>.cmd.device.*`) over the same handlers as REST."""
        return CommandResponder(
            self.nc,
            self.handlers(),
            lambda headers: authenticate_headers(headers, self.tokens, self.identity),
            subject_prefix=self.stream.subject_prefix,
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            on_saved=self.saved,
            control=self.control(),
        )

    def services(self) -> Services:
        return Services(
            app=self.app,
            driver=self.driver,
            read_pool=self.read_pool,
            commands=self.handlers(),
            identity=self.identity,
            tokens=self.tokens,
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            stream_name=self.stream.name,
            fanout=self.fanout,
            zone=self.settings.zone,
            energy_rules=energy_rules(self.settings),
            exports=self.data_exports(),
            on_saved=self.saved,
            edge=self.edge(),
            control=self.control(),
            config=self.config(),
            host=self.settings.host,
            energy=EnergyHandlers(StoreUnitOfWork(self.app), self.clock, energy_settings(self.settings)),
            clock=self.clock,
            parts=self.supervisor.status if self.supervisor is not None else list,
            refusals=self.refusal_tally(),
            compliance=ComplianceJobs(
                self.settings.compliance_dir, self.database_url, self.app, chain_link,
                ComplianceHandlers(StoreUnitOfWork(self.app)),
            ),
        )

    def refusal_tally(self) -> RefusalTally:
        """This process's count of refused sign-ins and permissions (recorded once a minute by `run_parts`)."""
        if self.refusals is None:
            self.refusals = RefusalTally(self.clock.now)
        return self.refusals

    def security_summaries(self) -> Awaitable[None]:
        return summarise_every(self.refusal_tally(), SecurityHandlers(StoreUnitOfWork(self.app)), on_saved=self.saved)

    def data_exports(self) -> DataExportJobs:
        """This process's data export jobs (created on first use; `run_parts` sweeps them with the API)."""
        if self.exports is None:
            s = self.settings
            catalog = ExportReadModel(self.read_pool)
            handlers = ExportHandlers(StoreUnitOfWork(self.app), catalog, self.clock, limit=s.exports_per_hour)
            self.exports = DataExportJobs(
                self.app, handlers, catalog, s.exports_dir, retention=timedelta(days=s.export_retention_days),
                rules=energy_rules(s),
                on_saved=self.saved,
            )
        return self.exports

    def live_fanout(self) -> FanOut:
        """This process's one live fan-out (created on first use, started by `run_parts` with the API)."""
        if self.fanout is None:
            s = self.settings
            options = LiveOptions(queue_size=s.live_queue, heartbeat=s.live_heartbeat,
                                  auth_timeout=s.live_auth_timeout, recheck=s.live_recheck)  # fmt: skip
            self.fanout = FanOut(self.nc, self.js, self.stream, directory=self.device_directory, options=options)
        return self.fanout

    async def device_directory(self) -> dict[UUID, DeviceEntry]:
        """Address and alias of every device the read model knows, removed ones too."""
        async with self.read_pool.connection() as conn:
            cur = await conn.execute(f"SELECT device_id, address, alias FROM {DEVICES_TABLE}")
            return {r[0]: DeviceEntry(address=r[1], alias=r[2]) for r in await cur.fetchall()}

    def edge(self) -> EdgePolicy:
        """The settings' rate limits and CORS origins, over the counters every API process shares."""
        s = self.settings
        limits = RateLimits(
            ip=s.rate_limit_ip, user=s.rate_limit_user, key=s.rate_limit_key,
            login=s.rate_limit_login, login_ip=s.rate_limit_login_ip,
        ) if s.rate_limits else RateLimits()  # fmt: skip
        return EdgePolicy(limits=limits, counters=self.rate_counters, cors_origins=s.cors_origins)


class StartupError(InfraError):
    """A server the process needs could not be reached or used in time; the one-line message says
    which and where (host:port, never credentials)."""


class StartupInterrupted(InfraError):
    """A stop was asked for (SIGINT/SIGTERM) while the process was still starting."""


READ_POOL_TIMEOUT_S = 5.0
# psycopg_pool retries a lost connection with growing pauses (1 s, 2 s, 4 s...) for this long, then
# connects again on demand: a short window lets the API notice a returning server within seconds.
READ_POOL_RECONNECT_S = 10.0
# The event store retries a failed call up to ten times itself, each waiting this long for a connection.
STORE_POOL_TIMEOUT_S = 2
_RETRY_FIRST_S, _RETRY_MAX_S = 0.2, 2.0
_STARTUP_FAILURES = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    eventsourcing.persistence.OperationalError,
    eventsourcing.persistence.InterfaceError,
    nats.errors.Error,
    BusError,
    OSError,
)
# PostgreSQL answers these FATALs while it cannot take connections yet; every other FATAL is final.
_PG_TRANSIENT_FATALS = ("starting up", "shutting down", "in recovery", "too many clients", "not yet accepting")


@dataclass
class _Startup:
    """What start-up is waiting for, and the last reason it did not get it."""

    timeout: float
    target: str = "the servers"
    reason: str = ""

    def failure(self, reason: str | None = None) -> StartupError:
        why = reason or self.reason or "no answer"
        return StartupError(f"cannot reach {self.target} within {self.timeout:g} s: {why}")

    def refused(self, reason: str) -> StartupError:
        return StartupError(f"cannot use {self.target}: {reason}")


def _reason(exc: BaseException) -> str:
    """One clean line about why a connection failed: no credentials, no control characters."""
    if isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)
    elif isinstance(exc, TimeoutError):
        text = "no answer"
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "Is the server running" not in ln]
        text = lines[-1] if lines else type(exc).__name__
        text = text.rpartition(" failed: ")[2].removeprefix("FATAL:").strip() or text
    return escape_text(mask_secrets(text))[:300]


@contextlib.asynccontextmanager
async def _starting(timeout: float, stop: asyncio.Event | None) -> AsyncIterator[_Startup]:
    """Bound the start-up to `timeout` seconds, and end it at once when `stop` is set."""
    startup = _Startup(timeout=timeout)
    task = asyncio.current_task()
    interrupted = False

    async def cancel_on_stop(event: asyncio.Event, starting: asyncio.Task[Any]) -> None:
        nonlocal interrupted
        await event.wait()
        interrupted = True
        while True:
            # Asked again until start-up ends: a library may swallow one cancellation.
            starting.cancel()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(cancel_on_stop(stop, task)) if stop is not None and task is not None else None
    bound = asyncio.timeout(timeout)
    try:
        async with bound:
            yield startup
    except TimeoutError:
        if not bound.expired():
            raise
        raise startup.failure() from None
    except asyncio.CancelledError:
        if not interrupted or task is None:
            raise
        while task.uncancel():
            pass
        raise StartupInterrupted() from None
    except _STARTUP_FAILURES as exc:
        raise startup.refused(_reason(exc)) from None
    finally:
        if watcher is not None:
            watcher.cancel()


async def _wait_for_postgres(database_url: str, startup: _Startup) -> None:
    """Retry connecting until PostgreSQL takes a connection; give up at once on a final refusal."""
    delay = _RETRY_FIRST_S
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        except psycopg.OperationalError as exc:
            startup.reason = _reason(exc)
            message = str(exc)
            if "FATAL" in message and not any(t in message for t in _PG_TRANSIENT_FATALS):
                raise startup.refused(startup.reason) from None
        else:
            await conn.close()
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)


async def _probe_nats(nats_url: str) -> None:
    """One connection attempt that fails instead of retrying forever, then closes again."""
    probe = Client()
    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:
        seen.append(exc)

    try:
        await probe.connect(
            nats_url,
            name="wattledger-probe",
            allow_reconnect=False,
            # nats-py's first connect retries each server until it is past this count, forever at -1.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=2,
            error_cb=remember,
        )
    except nats.errors.NoServersError:
        raise seen[-1] if seen else TimeoutError() from None
    finally:
        with contextlib.suppress(Exception):
            await probe.close()


async def _wait_for_nats(nats_url: str, startup: _Startup) -> None:
    """Retry until a NATS server takes a connection; give up at once when it refuses our credentials."""
    delay = _RETRY_FIRST_S
    while True:
        try:
            await _probe_nats(nats_url)
            return
        except nats.errors.AuthorizationError as exc:
            raise startup.refused(_reason(exc) or "authorization violation") from None
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            startup.reason = _reason(exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)


def _store_env(database_url: str) -> dict[str, str]:
    # Pre-ping off: psycopg_pool's check sleeps 1 s, 2 s, 4 s... between dead connections (five dead
    # ones took 7 s to get past), while the store's own retry drops one per attempt, 0.2 s apart.
    return {
        **store_env(database_url),
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_CONNECT_TIMEOUT": str(STORE_POOL_TIMEOUT_S),
    }


class ReadPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """The API's read pool: every connection is tested as it is handed out, and a dead one is
    dropped for the next at once.

    psycopg_pool's own `check` runs the same test but sleeps 1 s, 2 s, 4 s... between failures,
    so after the server ended all the pool's connections a request waited seconds or timed out.
    """

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(self.max_size):
            conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            try:
                await self.check_connection(conn)
            except psycopg.Error:
                await self.putconn(conn)
                continue
            return conn
        return await super().getconn(max(deadline - time.monotonic(), 0.0))


@asynccontextmanager
async def open_runtime(
    settings: Settings, database_url: str, nats_url: str, *, stop: asyncio.Event | None = None,
    relay_url: str | None = None,
) -> AsyncIterator[Runtime]:
    """Connect to PostgreSQL and NATS, create what is missing, and close everything on exit.

    Start-up waits for the servers at most `settings.startup_timeout` seconds, then raises
    StartupError; it raises StartupInterrupted as soon as `stop` is set. Once running,
    NATS reconnects without end and the read pool replaces connections it finds dead.

    The relay publishes through a connection of its own to `relay_url` (else the settings'
    `nats_relay_url`) when that differs from `nats_url`: on a NATS with authorization only the
    relay's user may publish events, and every other part connects as a user who may not.
    """
    relay_url = relay_url or settings.nats_relay_url or nats_url
    relay_nc: Client | None = None
    app: WattLedger | None = None
    engine: ProjectionEngine | None = None
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
    nc: Client | None = None
    relay: Relay | None = None
    rate_counters: PgRateCounters | None = None
    driver = KasaDriver(timeout=settings.poll_timeout)
    try:
        async with _starting(settings.startup_timeout, stop) as startup:
            # Both servers answer before anything is created or logged.
            startup.target = f"PostgreSQL at {postgres_endpoint(database_url)}"
            await _wait_for_postgres(database_url, startup)
            startup.target, startup.reason = f"NATS at {nats_endpoint(nats_url)}", ""
            await _wait_for_nats(nats_url, startup)
            startup.target, startup.reason = f"PostgreSQL at {postgres_endpoint(database_url)}", ""
            await asyncio.to_thread(ensure_events_schema, database_url)
            app = await asyncio.to_thread(WattLedger, _store_env(database_url))
            engine = ProjectionEngine(app, database_url, all_projectors(settings))
            await asyncio.to_thread(engine.setup)
            read_pool = ReadPool(
                database_url,
                min_size=1,
                max_size=8,
                open=False,
                name="wattledger-read",
                timeout=READ_POOL_TIMEOUT_S,
                reconnect_timeout=READ_POOL_RECONNECT_S,
            )
            await read_pool.open(wait=True, timeout=settings.startup_timeout)
            box = await open_secret_box(database_url, settings.secret_key)
            tokens = await TokenService.open(database_url, clock=SystemClock())
            startup.target = f"NATS at {nats_endpoint(nats_url)}"
            nc = await connect_nats(nats_url, name="wattledger")
            js = nc.jetstream()
            relay_js = js
            if relay_url != nats_url:
                startup.target, startup.reason = f"NATS at {nats_endpoint(relay_url)} (relay)", ""
                await _wait_for_nats(relay_url, startup)
                relay_nc = await connect_nats(relay_url, name="wattledger-relay")
                relay_js = relay_nc.jetstream()
            stream = StreamConfig(name=settings.stream_name, subject_prefix=settings.subject_prefix)
            startup.target = f"JetStream on NATS at {nats_endpoint(nats_url)}"
            await ensure_stream(js, stream)
        relay = Relay(app, relay_js, database_url=database_url, stream=stream)
        rate_counters = PgRateCounters(database_url)
        identity = IdentityHandlers(
            StoreUnitOfWork(app), Argon2Hasher(), box, PyotpVerifier(), RandomSecrets(), SystemClock(),
            IdentityReadModels(read_pool),
        )  # fmt: skip
        yield Runtime(
            settings=settings,
            database_url=database_url,
            nats_url=nats_url,
            app=app,
            engine=engine,
            read_pool=read_pool,
            driver=driver,
            nc=nc,
            js=js,
            stream=stream,
            relay=relay,
            identity=identity,
            tokens=tokens,
            rate_counters=rate_counters,
        )
    finally:
        await driver.close()
        if rate_counters is not None:
            await rate_counters.close()
        if relay is not None:
            await relay.aclose()
        if relay_nc is not None:
            await relay_nc.drain()
        if nc is not None:
            await nc.drain()
        if read_pool is not None:
            await read_pool.close()
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if app is not None:
            await asyncio.to_thread(app.close)


class _QuietServer(uvicorn.Server):
    """Uvicorn without its own signal handlers: the CLI owns SIGINT/SIGTERM and sets `stop`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_api(runtime: Runtime, stop: asyncio.Event) -> None:
    """Run the HTTP API until `stop` is set; requests in flight are finished first."""
    config = uvicorn.Config(
        create_app(runtime.services()),
        host=runtime.settings.host,
        port=runtime.settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        **runtime.settings.proxy_options(),
    )
    server = _QuietServer(config)

    async def stop_server() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_server())
    log.info("api.listening", url=f"http://{runtime.settings.host}:{runtime.settings.port}/api")
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise OSError(f"the API could not listen on {runtime.settings.host}:{runtime.settings.port}")


async def run_parts(
    runtime: Runtime, stop: asyncio.Event, *, api: bool, poll: bool, relay: bool, project: bool,
    execute: bool = False, supervisor: Supervisor | None = None,
) -> None:
    """Run the chosen parts side by side, each supervised, until `stop` is set.

    A part that fails is logged and restarted alone with backoff (see `infra.supervisor`); one
    that fails too often raises PartFailedTooOften, after every part was stopped. The poller
    follows the system configuration as it changes; `execute` runs the command executor.
    """
    supervisor = supervisor or Supervisor()
    runtime.supervisor = supervisor
    if relay:
        runtime.wakers.append(runtime.relay.wake)
        supervisor.add("relay", runtime.relay.run)
    if project:
        runtime.wakers.append(runtime.engine.wake)
        supervisor.add("projector", runtime.engine.run)
    if poll:

        async def run_poller() -> None:
            poller = runtime.poller()
            await together(poller.run(), poller.follow_config(runtime.config().current))

        supervisor.add("poller", run_poller)
    if execute:
        supervisor.add("executor", lambda: runtime.executor().run(stop), watches_stop=True)
    try:
        if api:
            await runtime.live_fanout().start()
            supervisor.add("api", lambda: serve_api(runtime, stop), watches_stop=True)
            supervisor.add("commands", lambda: runtime.responder().run(stop), watches_stop=True)
            supervisor.add("exports", runtime.data_exports().run)
            supervisor.add("security", runtime.security_summaries)
        await supervisor.run(stop)
    finally:
        if runtime.fanout is not None:
            await runtime.fanout.stop()
        if runtime.exports is not None:
            await runtime.exports.close()
