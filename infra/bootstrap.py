"""The composition root: opens the connections a process needs, builds its `Runtime`, and runs its parts.

`open_runtime` waits for the servers (`infra.startup`), creates what is missing, opens the
pools (`infra.pools`) and connections, and yields the object graph (`infra.runtime.Runtime`);
`run_parts` runs the chosen parts side by side under one supervisor, the API through
`infra.serving`. The names the tests and benchmarks have always taken from here are named
here too (`Runtime`, `all_projectors`, `cancel_all`, `_QuietServer`, the start-up errors).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from nats.aio.client import Client
from psycopg_pool import AsyncConnectionPool

from adapters.bus import StreamConfig, connect_nats, ensure_stream, may_publish_events
from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema
from adapters.jobs import every
from adapters.eventlog import EventLog
from adapters.identity import Argon2Hasher, PyotpVerifier, RandomSecrets, TokenService, open_secret_box
from adapters.identity_versions import NotingStore, RememberedVersions
from adapters.kasa_driver import KasaDriver
from adapters.ratelimits import PgRateCounters
from adapters.relay import Relay
from domain.energy_handlers import EnergyHandlers
from domain.identity_handlers import IdentityHandlers
from domain.push_handlers import PushHandlers
from infra.child_parts import ChildProcess
from infra.pools import event_store_env, read_pool as new_read_pool
from infra.runtime import Runtime, all_projectors
from infra.serving import QuietServer as _QuietServer
from infra.serving import serve_api
from infra.settings import Settings, nats_endpoint, postgres_endpoint
from infra.startup import StartupError, StartupInterrupted, starting, wait_for_nats, wait_for_postgres
from infra.supervisor import Supervisor, cancel_all, together
from projections.engine import ProjectionEngine
from projections.identity import IdentityReadModels
from projections.identity_activity import create_activity_tables

__all__ = [
    "Runtime",
    "StartupError",
    "StartupInterrupted",
    "_QuietServer",
    "all_projectors",
    "cancel_all",
    "open_runtime",
    "run_parts",
]

log = structlog.get_logger(__name__)


@asynccontextmanager
async def open_runtime(
    settings: Settings, database_url: str, nats_url: str, *, stop: asyncio.Event | None = None,
    relay_url: str | None = None, with_relay: bool = True,
) -> AsyncIterator[Runtime]:
    """Connect to PostgreSQL and NATS, create what is missing, and close everything on exit.

    Start-up waits for the servers at most `settings.startup_timeout` seconds, then raises
    StartupError; it raises StartupInterrupted as soon as `stop` is set. Once running,
    NATS reconnects without end and the read pool replaces connections it finds dead.

    The relay publishes through a connection of its own to `relay_url` (else the settings'
    `nats_relay_url`) when that differs from `nats_url`: on a NATS with authorization only the
    relay's user may publish events, and every other part connects as a user who may not.
    That connection is opened only in a process whose relay part runs (`with_relay`), and there
    start-up asks first whether its user may publish events: if not (an external NATS with
    authorization and no `WATTLEDGER_NATS_RELAY_URL`), it stops with StartupError saying so.
    """
    relay_url = relay_url or settings.nats_relay_url or nats_url
    relay_nc: Client | None = None
    app: WattLedger | None = None
    engine: ProjectionEngine | None = None
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
    nc: Client | None = None
    relay: Relay | None = None
    rate_counters: PgRateCounters | None = None
    versions: RememberedVersions | None = None
    driver = KasaDriver(timeout=settings.poll_timeout)
    try:
        async with starting(settings.startup_timeout, stop) as startup:
            # Both servers answer before anything is created or logged.
            startup.target = f"PostgreSQL at {postgres_endpoint(database_url)}"
            await wait_for_postgres(database_url, startup)
            startup.target, startup.reason = f"NATS at {nats_endpoint(nats_url)}", ""
            await wait_for_nats(nats_url, startup)
            startup.target, startup.reason = f"PostgreSQL at {postgres_endpoint(database_url)}", ""
            await asyncio.to_thread(ensure_events_schema, database_url)
            app = await asyncio.to_thread(WattLedger, event_store_env(database_url))
            engine = ProjectionEngine(app, database_url, all_projectors(settings))
            await asyncio.to_thread(engine.setup)
            read_pool = new_read_pool(database_url)
            await read_pool.open(wait=True, timeout=settings.startup_timeout)
            async with read_pool.connection() as conn:
                await create_activity_tables(conn)
            box = await open_secret_box(database_url, settings.secret_key)
            tokens = await TokenService.open(database_url, clock=SystemClock())
            startup.target = f"NATS at {nats_endpoint(nats_url)}"
            nc = await connect_nats(nats_url, name="wattledger")
            js = nc.jetstream()
            relay_js = js
            if with_relay and relay_url != nats_url:
                startup.target, startup.reason = f"NATS at {nats_endpoint(relay_url)} (relay)", ""
                await wait_for_nats(relay_url, startup)
                relay_nc = await connect_nats(relay_url, name="wattledger-relay")
                relay_js = relay_nc.jetstream()
            stream = StreamConfig(name=settings.stream_name, subject_prefix=settings.subject_prefix)
            startup.target = f"JetStream on NATS at {nats_endpoint(nats_url)}"
            await ensure_stream(js, stream)
            if with_relay and not await may_publish_events(relay_js, stream):
                startup.target = f"NATS at {nats_endpoint(relay_url)} (relay)"
                raise startup.refused(
                    f"its user may not publish to {stream.subjects[0]}, so no event would reach JetStream; "
                    "set WATTLEDGER_NATS_RELAY_URL to a user who may"
                )
        relay = Relay(app, relay_js, database_url=database_url, stream=stream)
        rate_counters = PgRateCounters(database_url)
        versions = RememberedVersions(IdentityReadModels(read_pool), database_url, channel=EventLog(app).channel)
        identity = IdentityHandlers(
            NotingStore(app, versions), Argon2Hasher(), box, PyotpVerifier(), RandomSecrets(), SystemClock(), versions,
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
        if versions is not None:
            await versions.close()
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


PUSH_SWEEP_S = 5.0
"""Seconds between looks for push devices silent past their interval and grace."""


async def push_sweeps(runtime: Runtime) -> None:
    """Beside the poller: mark offline, once, each push device silent past its interval and grace,
    as the injected clock tells."""
    store = StoreUnitOfWork(runtime.app)
    push = PushHandlers(store, runtime.clock, RandomSecrets(), EnergyHandlers(store, runtime.clock))

    async def sweep() -> None:
        if await push.mark_all_silent():
            runtime.saved()

    await every("push", PUSH_SWEEP_S, sweep)


async def run_parts(
    runtime: Runtime, stop: asyncio.Event, *, api: bool, poll: bool, relay: bool, project: bool,
    execute: bool = False, supervisor: Supervisor | None = None, relay_process: ChildProcess | None = None,
) -> None:
    """Run the chosen parts side by side, each supervised, until `stop` is set.

    With `relay_process`, the relay part is that child process (`infra.child_parts`), supervised
    like the others under the name `relay`; it wakes on the event store's notifications rather than
    on this process's saves.

    A part that fails is logged and restarted alone with backoff (see `infra.supervisor`); one
    that fails too often raises PartFailedTooOften, after every part was stopped. The poller
    follows the system configuration as it changes; `execute` runs the command executor.
    """
    supervisor = supervisor or Supervisor(clock=runtime.clock)
    runtime.supervisor = supervisor
    if relay and relay_process is not None:
        supervisor.add("relay", lambda: relay_process.run(stop), watches_stop=True)
    elif relay:
        runtime.wakers.append(runtime.relay.wake)
        supervisor.add("relay", runtime.relay.run)
    if project:
        runtime.wakers.append(runtime.engine.wake)
        supervisor.add("projector", runtime.engine.run)
        supervisor.add("retention", runtime.retention().run)
        supervisor.add("alerts", lambda: runtime.alert_dispatcher().run())
    if poll:

        async def run_poller() -> None:
            poller = runtime.poller()
            await together(poller.run(), poller.follow_config(runtime.config().current))

        supervisor.add("poller", run_poller)
        supervisor.add("push", lambda: push_sweeps(runtime))
    if execute:
        supervisor.add("executor", lambda: runtime.executor().run(stop), watches_stop=True)
    try:
        if api:
            await runtime.live_fanout().start()
            supervisor.add("api", lambda: serve_api(runtime, stop), watches_stop=True)
            supervisor.add("commands", lambda: runtime.responder().run(stop), watches_stop=True)
            supervisor.add("exports", runtime.export_sweeps)
            supervisor.add("security", runtime.security_summaries)
            supervisor.add("backup-schedules", lambda: runtime.backup_schedules().run())
        await supervisor.run(stop)
    finally:
        if runtime.fanout is not None:
            await runtime.fanout.stop()
        if runtime.exports is not None:
            await runtime.exports.close()
