"""What the HTTP handlers need, built once by the composition root and handed to `create_app`."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from adapters.compliance import ComplianceJobs
from adapters.data_exports import DataExportJobs
from adapters.eventlog import EventLog
from adapters.eventstore import SystemClock, WattLedger
from adapters.fanout import FanOut
from adapters.identity import TokenService
from adapters.kasa_driver import KasaDriver
from api.errors import connection_lost
from api.metrics import ProcessMetrics
from api.pending import note_pending
from api.ratelimit import EdgePolicy
from api.security import RefusalTally
from domain.control_handlers import ConfigHandlers, ControlHandlers
from domain.energy import EnergyRules
from domain.energy_handlers import EnergyHandlers
from domain.handlers import CommandHandlers
from domain.ports import Clock
from domain.identity_handlers import IdentityHandlers
from projections.tables import READ_SCHEMA

VERSION = "0.1.0"


class PartStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One supervised part of this process: `running`, `degraded` (failed within the last minute or
    waiting to restart) or `stopped`; its restarts and the last error, as one line."""

    name: str
    state: str
    restarts: int
    last_error: str | None = None
    last_failure_at: datetime | None = None


@dataclass
class Services:
    """The application service, the device driver, the read-model pool, identity and its tokens."""

    app: WattLedger
    driver: KasaDriver
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    commands: CommandHandlers
    identity: IdentityHandlers
    tokens: TokenService
    discovery_target: str = "255.255.255.255"
    discovery_port: int | None = None
    stream_name: str = "WL_EVENTS"
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    energy_rules: EnergyRules = field(default_factory=EnergyRules)
    exports: DataExportJobs | None = None
    on_saved: Callable[[], None] = lambda: None
    edge: EdgePolicy = field(default_factory=EdgePolicy)
    fanout: FanOut | None = None
    control: ControlHandlers | None = None
    config: ConfigHandlers | None = None
    compliance: ComplianceJobs | None = None
    energy: EnergyHandlers | None = None
    host: str = "127.0.0.1"
    clock: Clock = field(default_factory=SystemClock)
    parts: Callable[[], list[PartStatus]] = list
    refusals: RefusalTally | None = None
    metrics: ProcessMetrics = field(default_factory=ProcessMetrics)
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @functools.cached_property
    def event_log(self) -> EventLog:
        """The notification log of `app`: its head and sections of it."""
        return EventLog(self.app)

    async def database_answers(self, *, timeout: float = 2.0, attempts: int = 3) -> bool:
        """Whether PostgreSQL answers a query now.

        A pooled connection that turns out dead is replaced and the query tried again. When the
        pool has none to give (it backs off between reconnects after an outage), the server is
        asked over a connection of its own, so the answer follows the server, not the pool.
        """
        for _ in range(attempts):
            try:
                async with self.read_pool.connection(timeout=timeout) as conn:
                    await conn.execute("SELECT 1")
                return True
            except PoolTimeout:
                break
            except (psycopg.Error, OSError) as exc:
                if not connection_lost(exc):
                    return False
        conninfo = self.read_pool.conninfo
        if not isinstance(conninfo, str):
            return False
        try:
            async with asyncio.timeout(timeout):
                conn = await psycopg.AsyncConnection.connect(conninfo)
        except (psycopg.Error, OSError, TimeoutError):
            return False
        await conn.close()
        return True

    async def drop_dead_connections(self) -> None:
        """Test the idle connections of both pools and replace the dead ones.

        Called after a request lost its connection: when the server ended one (restart,
        failover, `pg_terminate_backend`), it usually ended the others as well.
        """
        await self.read_pool.check()
        await asyncio.to_thread(self.event_log.check_connections)

    async def wait_projected(self, notification_id: int, *, projector: str = "devices", timeout: float = 3.0) -> bool:
        """Wait until `projector` has applied `notification_id` (read-your-writes for commands).

        False when `timeout` runs out first: the answer then names the read model in
        `X-Read-Models-Pending` (see `api.pending`)."""
        self.on_saved()
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            async with self.read_pool.connection() as conn:
                cur = await conn.execute(
                    f"SELECT position FROM {READ_SCHEMA}.projector_tracking WHERE name = %s", (projector,)
                )
                row = await cur.fetchone()
            if row and row[0] >= notification_id:
                return True
            if time.monotonic() >= deadline:
                note_pending(projector, notification_id)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def wait_identity(self, *, timeout: float = 3.0) -> bool:
        """Wait until the identity read models hold everything stored so far, for the lists they answer.

        Authentication does not need it: it reads the event store, so an ended session, a revoked
        key or a deactivated user stops working as soon as the change is stored.
        """
        newest = await asyncio.to_thread(self.event_log.max_id)
        return await self.wait_projected(newest, projector="identity", timeout=timeout)
