"""A whole WattLedger process in-test: real PostgreSQL, real JetStream, emulated devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import httpx

from adapters.bus import StreamConfig
from adapters.emulator import EmulatorFleet
from api.app import create_app
from infra.bootstrap import Runtime, open_runtime
from infra.settings import Settings


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
    )


@pytest.fixture
async def runtime(settings: Settings, database_url: str, nats_url: str) -> AsyncIterator[Runtime]:
    async with open_runtime(settings, database_url, nats_url) as rt:
        yield rt


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
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app through an HTTP client on the test's own event loop (the app's pools live there)."""
    transport = httpx.ASGITransport(app=create_app(runtime.services()), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattledger.test") as http:
        yield http


@pytest.fixture
async def fleet() -> AsyncIterator[EmulatorFleet]:
    async with EmulatorFleet(["HS110", "KP115", "HS100", "HS300", "KP303"], host="127.0.0.1", port=0,
                             speed=120.0, seed=11) as devices:
        yield devices
