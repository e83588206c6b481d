"""The composition root: builds every part from settings and wires the flow between them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import structlog
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from adapters.bus import StreamConfig, connect_nats, ensure_stream
from adapters.eventstore import StoreUnitOfWork, SystemClock, WattLedger, ensure_events_schema, store_env
from adapters.kasa_driver import KasaDriver
from adapters.nats_commands import CommandResponder
from adapters.poller import Poller
from adapters.relay import Relay
from api.app import create_app
from api.services import Services
from domain.handlers import CommandHandlers
from infra.settings import Settings
from projections.devices import DevicesProjector, active_devices
from projections.engine import ProjectionEngine, Projector

log = structlog.get_logger(__name__)


def all_projectors(settings: Settings) -> list[Projector]:
    return [DevicesProjector(settings.zone)]


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
    wakers: list[Callable[[], None]] = field(default_factory=list)

    def saved(self) -> None:
        """Something was stored: nudge the in-process relay and projectors."""
        for wake in self.wakers:
            wake()

    async def known_devices(self) -> Sequence[tuple[UUID, str]]:
        async with self.read_pool.connection() as conn:
            return await active_devices(conn)

    def poller(self) -> Poller:
        return Poller(
            self.handlers(cache=True),
            self.driver,
            self.known_devices,
            interval=self.settings.polling_interval,
            concurrency=self.settings.poll_concurrency,
            offline_after=self.settings.offline_after,
            on_saved=self.saved,
        )

    def handlers(self, *, cache: bool = False) -> CommandHandlers:
        """The write side over this process's store and driver; `cache` for a single writer (the poller)."""
        return CommandHandlers(StoreUnitOfWork(self.app, cache=cache), self.driver, SystemClock())

    def responder(self) -> CommandResponder:
        """NATS request/reply commands (`<prefix>.cmd.device.*`) over the same handlers as REST."""
        return CommandResponder(
            self.nc,
            self.handlers(),
            subject_prefix=self.stream.subject_prefix,
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            on_saved=self.saved,
        )

    def services(self) -> Services:
        return Services(
            app=self.app,
            driver=self.driver,
            read_pool=self.read_pool,
            commands=self.handlers(),
            discovery_target=self.settings.discovery_target,
            discovery_port=self.settings.discovery_port,
            zone=self.settings.zone,
            on_saved=self.saved,
        )


@asynccontextmanager
async def open_runtime(settings: Settings, database_url: str, nats_url: str) -> AsyncIterator[Runtime]:
    """Connect to PostgreSQL and NATS, create what is missing, and close everything on exit."""
    await asyncio.to_thread(ensure_events_schema, database_url)
    app = await asyncio.to_thread(WattLedger, store_env(database_url))
    engine = ProjectionEngine(app, database_url, all_projectors(settings))
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
    nc: Client | None = None
    relay: Relay | None = None
    driver = KasaDriver(timeout=settings.poll_timeout)
    try:
        await asyncio.to_thread(engine.setup)
        read_pool = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False)
        await read_pool.open(wait=True, timeout=30)
        nc = await connect_nats(nats_url, name="wattledger")
        js = nc.jetstream()
        stream = StreamConfig(name=settings.stream_name, subject_prefix=settings.subject_prefix)
        await ensure_stream(js, stream)
        relay = Relay(app, js, database_url=database_url, stream=stream)
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
        )
    finally:
        await driver.close()
        if relay is not None:
            await relay.aclose()
        if nc is not None:
            await nc.drain()
        if read_pool is not None:
            await read_pool.close()
        await asyncio.to_thread(engine.close)
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
    runtime: Runtime, stop: asyncio.Event, *, api: bool, poll: bool, relay: bool, project: bool
) -> None:
    """Run the chosen parts side by side until `stop` is set or one of them fails."""
    background: list[asyncio.Task[None]] = []
    if relay:
        runtime.wakers.append(runtime.relay.wake)
        background.append(asyncio.create_task(runtime.relay.run(), name="relay"))
    if project:
        runtime.wakers.append(runtime.engine.wake)
        background.append(asyncio.create_task(runtime.engine.run(), name="projector"))
    if poll:
        background.append(asyncio.create_task(runtime.poller().run(), name="poller"))
    try:
        stopper = asyncio.create_task(stop.wait())
        if api:
            background.append(asyncio.create_task(serve_api(runtime, stop), name="api"))
            background.append(asyncio.create_task(runtime.responder().run(stop), name="commands"))
        done, _ = await asyncio.wait([*background, stopper], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        api_task = next((t for t in background if t.get_name() == "api"), None)
        if api_task is not None:
            await asyncio.wait_for(asyncio.shield(api_task), timeout=10)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
