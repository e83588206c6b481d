"""Batch projection engine: read the notification log in large sections, commit rows and position together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
import structlog
from eventsourcing.persistence import Notification

from adapters.eventstore import WattLedger

log = structlog.get_logger(__name__)

READ_SCHEMA = "wl_read"

TRACKING_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {READ_SCHEMA};
CREATE TABLE IF NOT EXISTS {READ_SCHEMA}.projector_tracking (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


class Projector(Protocol):
    """A read model: its tables, how an event changes them, how to empty them."""

    name: str

    def create_tables(self, cur: psycopg.Cursor[Any]) -> None: ...

    def clear(self, cur: psycopg.Cursor[Any]) -> None: ...

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        """Apply events in log order; called once per batch, inside the batch's transaction."""
        ...


class ProjectionEngine:
    """Runs projectors over the WattLedger event log.

    Each batch of events is applied and its tracking position saved in one
    transaction, so a crash loses nothing and applies nothing twice. Two engines
    on one database serialise on the tracking row lock.
    """

    def __init__(
        self, app: WattLedger, database_url: str, projectors: Sequence[Projector], *, batch_size: int = 2000
    ) -> None:
        self.app = app
        self.database_url = database_url
        self.projectors = {p.name: p for p in projectors}
        self.batch_size = batch_size
        self._wakeup = asyncio.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        """One connection kept between batches (idle polls would otherwise connect twice a second)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def setup(self) -> None:
        with psycopg.connect(self.database_url) as conn, conn.cursor() as cur:
            cur.execute(TRACKING_DDL)
            for projector in self.projectors.values():
                projector.create_tables(cur)
                cur.execute(
                    f"INSERT INTO {READ_SCHEMA}.projector_tracking (name) VALUES (%s) ON CONFLICT DO NOTHING",
                    (projector.name,),
                )

    def position(self, name: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                f"SELECT position FROM {READ_SCHEMA}.projector_tracking WHERE name = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def project_batch(self, name: str) -> int:
        """Apply the next batch of events to one projector; returns how many were applied."""
        projector = self.projectors[name]
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            row = cur.execute(
                f"SELECT position FROM {READ_SCHEMA}.projector_tracking WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            position = int(row[0]) if row else 0
            notifications: Sequence[Notification] = self.app.recorder.select_notifications(
                start=position, limit=self.batch_size, inclusive_of_start=False
            )
            if not notifications:
                return 0
            projector.apply_batch(cur, [self.app.mapper.to_domain_event(n) for n in notifications])
            cur.execute(
                f"UPDATE {READ_SCHEMA}.projector_tracking SET position = %s, updated_at = now() WHERE name = %s",
                (notifications[-1].id, name),
            )
            return len(notifications)

    def catch_up(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Project until the log's end; returns the number of events applied."""
        total = 0
        while applied := self.project_batch(name):
            total += applied
            if progress:
                progress(applied)
        return total

    def rebuild(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Empty one read model and replay it from the first event."""
        projector = self.projectors[name]
        with psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                f"SELECT position FROM {READ_SCHEMA}.projector_tracking WHERE name = %s FOR UPDATE", (name,)
            )
            projector.clear(cur)
            cur.execute(
                f"UPDATE {READ_SCHEMA}.projector_tracking SET position = 0, updated_at = now() WHERE name = %s",
                (name,),
            )
        log.info("projector.rebuild.started", projector=name)
        return self.catch_up(name, progress)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, poll_interval: float = 0.5) -> None:
        """Keep every projector caught up: woken by `wake()`, and polling as a fallback."""
        await asyncio.to_thread(self.setup)
        while True:
            try:
                for name in self.projectors:
                    applied = await asyncio.to_thread(self.catch_up, name)
                    if applied:
                        log.debug("projector.applied", projector=name, events=applied)
            except Exception:
                # A failed batch rolled back whole; the next pass retries it.
                log.exception("projector.batch_failed")
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), poll_interval)
            except TimeoutError:
                pass
