"""Real servers for tests: the ones named by DATABASE_URL / NATS_URL, else embedded ones.

Every test that stores events gets its own database and its own JetStream
stream and subject prefix, so runs and tests never see each other's data. The fixtures
built on the servers (`database_url`, `app`, `settings`, `runtime`, `fleet`) come from
tests/harness.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
import structlog

from adapters.bus import StreamConfig
from adapters.eventstore import SystemClock
from domain.ports import Clock
pytest_plugins = ("tests.harness",)


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from infra.embedded import embedded_servers
    from tests.harness import DROPS

    data_dir: Path = tmp_path_factory.mktemp("servers")
    with embedded_servers(
        data_dir,
        database_url=os.environ.get("DATABASE_URL") or None,
        nats_url=os.environ.get("NATS_URL") or None,
        nats_port=0,
        # Like the NATS that CI names: tests publish and subscribe as they please.
        nats_authorization=False,
    ) as urls:
        try:
            yield urls
        finally:
            DROPS.drain()  # every test database is gone before an embedded server stops


@pytest.fixture(scope="session")
def nats_url(server_urls: tuple[str, str]) -> str:
    return server_urls[1]


@pytest.fixture
def stream_config(nats_url: str) -> Iterator[StreamConfig]:
    """A stream name and subject prefix of this test's own; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    config = StreamConfig(name=f"WLT_{tag.upper()}", subject_prefix=f"wlt{tag}")
    yield config
    asyncio.run(_delete_stream(nats_url, config.name))


async def _delete_stream(nats_url: str, name: str) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def clock() -> Clock:
    """The clock a runtime's API queries and write handlers read; a test module may put a fixed one here."""
    return SystemClock()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs a CLI command in-process configures logging onto its captured stderr, which
    pytest closes afterwards: later log lines (from any thread) would fail. Put the defaults back."""
    yield
    if structlog.is_configured():
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "wattledger"]:
            root.removeHandler(handler)


# pgserver logs from its atexit hook, after pytest has closed the streams it captured.
logging.getLogger("pgserver").setLevel(logging.WARNING)
