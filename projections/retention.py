"""Retention of raw readings: `data_retention_days` enforced on the raw-reading read model only.

A sweep deletes the rows of `wl_read.energy_readings` measured before `now - data_retention_days`,
in batches of `BATCH` rows, one short transaction each. Per channel it keeps the newest reading
before that moment: the energy fold resumes from it when a reading arrives out of order, so the
rollups of the days kept never change for lack of it.

What stays: the 5-minute buckets, hourly rollups and their costs (`energy_buckets`,
`energy_hours`), every other read model, and the event log, which holds every reading for good
(it is the audit trail). `wattledger project --rebuild energy` replays the log and so brings the
raw rows back until the next sweep.

Several processes may run sweeps: a batch takes a transaction-level advisory lock, and a process
that finds it taken leaves the sweep to the one holding it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from adapters.faults import DATABASE_FAULTS, report
from domain.ports import Clock
from projections.energy import READINGS

log = structlog.get_logger(__name__)

BATCH = 5000
SWEEP_EVERY_S = 3600.0
RETENTION_LOCK = 0x574C_5245_544E
"""The advisory lock key a sweep's batch holds (`WLRETN`)."""

_PRUNE = f"""
DELETE FROM {READINGS.name} WHERE ctid IN (
    SELECT r.ctid FROM {READINGS.name} r
    WHERE r.at < %(cutoff)s AND r.at < (
        SELECT max(k.at) FROM {READINGS.name} k
        WHERE k.device_id = r.device_id AND k.channel = r.channel AND k.at < %(cutoff)s
    )
    LIMIT %(batch)s
)
"""


class RetentionSweep(msgspec.Struct, frozen=True, kw_only=True):
    """One sweep: the moment before which raw readings go, and how many rows went."""

    cutoff: datetime
    removed: int
    skipped: bool = False
    """Another process held the sweep's lock: it removes them."""


async def prune_readings(conn: psycopg.AsyncConnection[Any], cutoff: datetime, *, batch: int = BATCH) -> int | None:
    """Delete one batch of raw readings older than `cutoff` (each channel keeps its newest one before it).

    Returns the rows deleted, or None when another process holds the lock."""
    async with conn.transaction():
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,))
        locked = await cur.fetchone()
        if not (locked and locked[0]):
            return None
        cur = await conn.execute(_PRUNE, {"cutoff": cutoff, "batch": batch})
        return cur.rowcount


class ReadingRetention:
    """Sweeps the raw readings older than the configured retention, every `every` seconds."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        days: Callable[[], Awaitable[int]],
        clock: Clock,
        *,
        every: float = SWEEP_EVERY_S,
        batch: int = BATCH,
    ) -> None:
        self.pool = pool
        self.days = days
        self.clock = clock
        self.every = every
        self.batch = batch

    async def sweep(self) -> RetentionSweep:
        """Delete every raw reading measured before now minus `data_retention_days`, batch after batch."""
        cutoff = self.clock.now() - timedelta(days=await self.days())
        removed = 0
        while True:
            async with self.pool.connection() as conn:
                deleted = await prune_readings(conn, cutoff, batch=self.batch)
            if deleted is None:
                return RetentionSweep(cutoff=cutoff, removed=removed, skipped=True)
            removed += deleted
            if deleted < self.batch:
                break
            await asyncio.sleep(0)
        if removed:
            log.info("retention.swept", cutoff=cutoff.isoformat(), removed=removed)
        return RetentionSweep(cutoff=cutoff, removed=removed)

    async def run(self) -> None:
        """Sweep now and every `every` seconds until cancelled; a database outage is one warning line and
        the sweep runs again at the next turn."""
        while True:
            try:
                await self.sweep()
            except DATABASE_FAULTS as exc:
                report("retention", exc)
            await asyncio.sleep(self.every)
