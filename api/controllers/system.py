"""Health and system status."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from psycopg_pool import PoolTimeout

from adapters.fanout import FanOutStatus
from adapters.relay import RelayStatus, relay_status
from api.errors import RETRY_AFTER_S
from api.guards import NO_CREDENTIALS
from api.services import VERSION, PartStatus, Services
from domain.access import Permission
from projections.devices import count_devices
from projections.tables import READ_SCHEMA
from projections.tracking import ProjectorStatus, projector_states, projector_status

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
    async def health(self, services: NamedDependency[Services]) -> Response[Health]:
        """Liveness and database reachability: 200 whenever the database answers, 503 with
        Retry-After when it does not (within about 2 s). `status` is `degraded` (still 200) while a
        supervised part of this process is failing or restarting, or a read model is failing or has
        quarantined events; `parts` and `projectors` say which. `live` is the live fan-out's state (absent
        in a process that serves no live clients)."""
        live = await services.fanout.status() if services.fanout is not None else None
        parts = services.parts()
        if await services.database_answers():
            projectors = await _projector_states(services)
            degraded = any(part.state != "running" for part in parts) or any(
                state != "current" for state in projectors.values()
            )
            return Response(Health(status="degraded" if degraded else "healthy", timestamp=services.clock.now(),
                                   live=live, parts=parts, projectors=projectors))  # fmt: skip
        return Response(
            Health(status="unhealthy", timestamp=services.clock.now(), live=live, parts=parts),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @get("/system/status", operation_id="getSystemStatus", opt={"permission": Permission.DEVICES_VIEW})
    async def status(self, services: NamedDependency[Services]) -> SystemStatus:
        """Version, uptime, device counts, database size, the newest reading, and the relay.

        `relay` gives the relay's position in the event log, its lag behind the newest event,
        and the events JetStream refused for good (stored, but missing from the stream).
        `projectors` gives each read model's schema version, position, lag, failure if any, `state`
        (`current`, `failing`, `degraded`) and the events it quarantined (`quarantined`, the newest
        in `quarantine`: position, event, error).
        """
        max_id = await asyncio.to_thread(services.event_log.max_id)
        async with services.read_pool.connection() as conn:
            total, online = await count_devices(conn)
            cur = await conn.execute(
                f"SELECT pg_database_size(current_database()), "
                f"(SELECT max(last_seen) FROM {READ_SCHEMA}.devices WHERE NOT removed)"
            )
            row: Any = await cur.fetchone()
            relay = await relay_status(conn, services.stream_name, max_id)
            projectors = await projector_status(conn, max_id)
        return SystemStatus(
            version=VERSION,
            uptime_seconds=int(time.monotonic() - services.started),
            devices_connected=online,
            devices_total=total,
            database_size_mb=round(row[0] / 1_048_576, 1),
            last_poll=row[1],
            events_stored=max_id,
            relay=relay,
            projectors=projectors,
        )


async def _projector_states(services: Services) -> dict[str, str]:
    """Each read model's state, or none when the database does not tell within PROJECTOR_CHECK_S."""
    try:
        async with asyncio.timeout(PROJECTOR_CHECK_S), services.read_pool.connection() as conn:
            return await projector_states(conn)
    except (psycopg.Error, TimeoutError, PoolTimeout):
        return {}
