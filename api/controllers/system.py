"""Health and system status."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import msgspec
import psycopg
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from psycopg_pool import PoolTimeout

from adapters.fanout import FanOutStatus
from adapters.relay import RelayStatus, relay_status
from api.errors import RETRY_AFTER_S
from api.guards import NO_CREDENTIALS
from api.health import DetailedHealth, HealthProbe
from api.deps import VERSION, ConfigDeps, PartStatus, SystemDeps
from domain.access import Permission
from projections.devices import count_devices, last_poll
from projections.tracking import ProjectorStatus, database_size, projector_states, projector_status

PROJECTOR_CHECK_S = 1.0


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    timestamp: datetime
    live: FanOutStatus | None = None
    """This process's live fan-out: following the stream, connected to NATS, messages still pending."""
    parts: list[PartStatus] = msgspec.field(default_factory=list)
    """This process's supervised parts, each `running`, `degraded` or `stopped`, with restarts and last error."""
    projectors: dict[str, str] = msgspec.field(default_factory=dict)
    """Each read model's state (shared by every process): `current`, `failing` (retried with backoff) or
    `degraded` (it quarantined events it could not apply; `wattledger project --retry` applies them again)."""


class SystemStatus(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    uptime_seconds: int
    devices_connected: int
    devices_total: int
    database_size_mb: float
    last_poll: datetime | None
    events_stored: int
    relay: RelayStatus
    projectors: list[ProjectorStatus]


class SystemController(Controller):
    path = "/api"
    tags = ["system"]

    @get("/health", operation_id="getHealth", opt={"public": True}, security=NO_CREDENTIALS)
    async def health(self, system_deps: NamedDependency[SystemDeps]) -> Response[Health]:
        """Liveness and database reachability: 200 whenever the database answers, 503 with
        Retry-After when it does not (within about 2 s). `status` is `degraded` (still 200) while a
        supervised part of this process is failing or restarting, or a read model is failing or has
        quarantined events; `parts` and `projectors` say which. `live` is the live fan-out's state."""
        live = await system_deps.fanout.status()
        parts = system_deps.parts()
        if await system_deps.reads.database_answers():
            projectors = await _projector_states(system_deps)
            degraded = any(part.state != "running" for part in parts) or any(
                state != "current" for state in projectors.values()
            )
            return Response(Health(status="degraded" if degraded else "healthy", timestamp=system_deps.clock.now(),
                                   live=live, parts=parts, projectors=projectors))  # fmt: skip
        return Response(
            Health(status="unhealthy", timestamp=system_deps.clock.now(), live=live, parts=parts),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @get("/system/status", operation_id="getSystemStatus", opt={"permission": Permission.DEVICES_VIEW})
    async def status(self, system_deps: NamedDependency[SystemDeps]) -> SystemStatus:
        """Version, uptime, device counts, database size, the newest reading, and the relay.

        `relay` gives the relay's position in the event log, its lag behind the newest event,
        and the events JetStream refused for good (stored, but missing from the stream).
        `projectors` gives each read model's schema version, position, lag, failure if any, `state`
        (`current`, `failing`, `degraded`) and the events it quarantined (`quarantined`, the newest
        in `quarantine`: position, event, error).
        """
        max_id = await system_deps.reads.newest()
        async with system_deps.reads.pool.connection() as conn:
            total, online = await count_devices(conn)
            size = await database_size(conn)
            newest_reading = await last_poll(conn)
            relay = await relay_status(conn, system_deps.stream_name, max_id)
            projectors = await projector_status(conn, max_id)
        return SystemStatus(
            version=VERSION,
            uptime_seconds=int(time.monotonic() - system_deps.started),
            devices_connected=online,
            devices_total=total,
            database_size_mb=round(size / 1_048_576, 1),
            last_poll=newest_reading,
            events_stored=max_id,
            relay=relay,
            projectors=projectors,
        )

    @get("/health/detailed", operation_id="getHealthDetailed", opt={"permission": Permission.SYSTEM_CONFIG})
    async def detailed(
        self, system_deps: NamedDependency[SystemDeps], config_deps: NamedDependency[ConfigDeps]
    ) -> Response[DetailedHealth]:
        """Each dependency and part of this process with its state (`healthy`, `degraded`, `unhealthy`) and
        the reason when not healthy: `database` (response time, size, events stored), `nats` (connected,
        stream messages, the relay's lag), `device_manager` (devices answering, missing polls, offline, the
        newest reading), `projectors` (each read model's lag and state), `parts` (state and restarts),
        `scheduler` (jobs), and the process's memory and CPU. 503 while `status` is `unhealthy`."""

        async def polling_interval() -> float:
            return (await config_deps.config.current()).polling_interval

        probe = HealthProbe(
            system_deps.reads.pool, system_deps.reads.newest, system_deps.fanout, system_deps.stream_name,
            system_deps.parts, polling_interval, system_deps.clock, started=system_deps.started,
        )  # fmt: skip
        report = await probe.report()
        return Response(report, status_code=503 if report.status == "unhealthy" else 200)


async def _projector_states(deps: SystemDeps) -> dict[str, str]:
    """Each read model's state, or none when the database does not tell within PROJECTOR_CHECK_S."""
    try:
        async with asyncio.timeout(PROJECTOR_CHECK_S), deps.reads.pool.connection() as conn:
            return await projector_states(conn)
    except (psycopg.Error, TimeoutError, PoolTimeout):
        return {}
