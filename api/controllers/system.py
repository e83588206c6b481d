"""Health and system status."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import msgspec
import psycopg
from litestar import Controller, Response, get
from litestar.di import NamedDependency

from api.services import VERSION, Services
from projections.devices import count_devices
from projections.engine import READ_SCHEMA


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    timestamp: datetime


class SystemStatus(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    uptime_seconds: int
    devices_connected: int
    devices_total: int
    database_size_mb: float
    last_poll: datetime | None
    events_stored: int


class SystemController(Controller):
    path = "/api"
    tags = ["system"]

    @get("/health", operation_id="getHealth")
    async def health(self, services: NamedDependency[Services]) -> Response[Health]:
        """Liveness and database reachability: 200 when healthy, 503 when the database is down."""
        now = datetime.now(timezone.utc)
        try:
            async with services.read_pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError):
            return Response(Health(status="unhealthy", timestamp=now), status_code=503)
        return Response(Health(status="healthy", timestamp=now))

    @get("/system/status", operation_id="getSystemStatus")
    async def status(self, services: NamedDependency[Services]) -> SystemStatus:
        """Version, uptime, device counts, database size and the time of the newest reading."""
        async with services.read_pool.connection() as conn:
            total, online = await count_devices(conn)
            cur = await conn.execute(
                f"SELECT pg_database_size(current_database()), "
                f"(SELECT max(last_seen) FROM {READ_SCHEMA}.devices WHERE NOT removed)"
            )
            row: Any = await cur.fetchone()
        max_id = await asyncio.to_thread(services.app.recorder.max_notification_id)
        return SystemStatus(
            version=VERSION,
            uptime_seconds=int(time.monotonic() - services.started),
            devices_connected=online,
            devices_total=total,
            database_size_mb=round(row[0] / 1_048_576, 1),
            last_poll=row[1],
            events_stored=max_id or 0,
        )
