"""What the HTTP handlers need, built once by the composition root and handed to `create_app`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.eventstore import WattLedger
from adapters.kasa_driver import KasaDriver
from domain.handlers import CommandHandlers
from projections.engine import READ_SCHEMA

VERSION = "0.1.0"


@dataclass
class Services:
    """The application service, the device driver and the read-model pool."""

    app: WattLedger
    driver: KasaDriver
    read_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    commands: CommandHandlers
    discovery_target: str = "255.255.255.255"
    discovery_port: int | None = None
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    on_saved: Callable[[], None] = lambda: None
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    async def wait_projected(self, notification_id: int, *, projector: str = "devices", timeout: float = 3.0) -> bool:
        """Wait until `projector` has applied `notification_id` (read-your-writes for commands)."""
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
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
