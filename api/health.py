"""The detailed health report (`GET /api/health/detailed`): each dependency and part of this process,
its state (`healthy`, `degraded` or `unhealthy`) and, when not healthy, the reason.

- `database`: answers a query (response time), its size, the events stored, devices and raw readings;
- `nats`: connected, the stream's messages, and the relay's position, lag and refused messages;
- `device_manager`: from the devices read model, the devices answering (`connected_devices`), missing
  polls but not yet marked offline (`failed_devices`), offline, and the newest reading (`last_cycle`);
- `projectors`: each read model's lag and state, and which fail;
- `parts`: each supervised part of this process, its state and restarts;
- `scheduler`: the scheduled jobs of this process (empty where none run).

The overall `status` is the worst of them. Every check has its own time bound, so a server that
hangs makes its component `unhealthy`, never the whole answer late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.fanout import FanOut
from adapters.faults import DATABASE_FAULTS, describe
from adapters.relay import relay_status
from domain.ports import Clock
from projections.devices import TABLE as DEVICES_TABLE
from projections.energy import READINGS
from projections.tracking import projector_status

State = Literal["healthy", "degraded", "unhealthy"]
CHECK_S = 2.0
SLOW_DATABASE_MS = 1000.0
RELAY_LAG_DEGRADED = 1000
_ORDER: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_STORE_FAULTS: tuple[type[BaseException], ...] = (*DATABASE_FAULTS, psycopg.Error, OSError, TimeoutError)
_PROCESS = psutil.Process()
"""This process; its CPU share is measured from one report to the next (the first report shows 0)."""


class DatabaseDetails(msgspec.Struct, frozen=True, kw_only=True):
    size_mb: float
    events_stored: int
    device_count: int
    reading_count: int
    """Raw readings kept (the planner's estimate: exact counting would scan the table)."""


class DatabaseHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    response_time_ms: float | None = None
    details: DatabaseDetails | None = None


class NatsHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    connected: bool = False
    stream: str
    stream_messages: int | None = None
    relay_position: int | None = None
    relay_lag: int | None = None
    relay_rejected: int | None = None


class DeviceManagerHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    connected_devices: int = 0
    failed_devices: int = 0
    offline_devices: int = 0
    last_cycle: datetime | None = None


class ReadModelHealth(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    lag: int
    quarantined: int
    last_error: str | None


class ProjectorsHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    read_models: list[ReadModelHealth] = msgspec.field(default_factory=list)


class PartHealth(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    restarts: int
    last_error: str | None = None


class PartsHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    parts: list[PartHealth] = msgspec.field(default_factory=list)


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One scheduled job: `state` `pending` (waiting for its time) or `running`."""

    name: str
    state: str
    next_run: datetime | None = None
    last_run: datetime | None = None
    last_error: str | None = None


class SchedulerHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    reason: str | None = None
    jobs_pending: int = 0
    jobs_running: int = 0
    jobs: list[JobStatus] = msgspec.field(default_factory=list)


class Components(msgspec.Struct, frozen=True, kw_only=True):
    database: DatabaseHealth
    nats: NatsHealth
    device_manager: DeviceManagerHealth
    projectors: ProjectorsHealth
    parts: PartsHealth
    scheduler: SchedulerHealth


class DetailedHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: State
    timestamp: datetime
    components: Components
    uptime_seconds: int
    memory_usage_mb: float
    cpu_usage_percent: float


class HealthProbe:
    """Gathers the detailed report of one API process from what it holds."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        newest: Callable[[], Awaitable[int]],
        fanout: FanOut | None,
        stream_name: str,
        parts: Callable[[], list[Any]],
        polling_interval: Callable[[], Awaitable[float]],
        clock: Clock,
        *,
        started: float,
        jobs: Callable[[], list[JobStatus]] = list,
    ) -> None:
        self.pool = pool
        self.newest = newest
        self.fanout = fanout
        self.stream_name = stream_name
        self.parts = parts
        self.polling_interval = polling_interval
        self.clock = clock
        self.started = started
        self.jobs = jobs

    async def report(self) -> DetailedHealth:
        newest: int | None = None
        try:
            async with asyncio.timeout(CHECK_S):
                newest = await self.newest()
        except _STORE_FAULTS as exc:
            database = DatabaseHealth(status="unhealthy", reason=f"the event store does not answer: {describe(exc)}")
        else:
            database = await self._bounded(self._database(newest), lambda r: DatabaseHealth(status="unhealthy", reason=r))
        nats_health = await self._bounded(
            self._nats(newest), lambda r: NatsHealth(status="unhealthy", reason=r, stream=self.stream_name)
        )
        devices = await self._bounded(self._devices(), lambda r: DeviceManagerHealth(status="unhealthy", reason=r))
        projectors = await self._bounded(self._projectors(newest), lambda r: ProjectorsHealth(status="unhealthy", reason=r))
        components = Components(
            database=database, nats=nats_health, device_manager=devices, projectors=projectors,
            parts=self._parts(), scheduler=self._scheduler(),
        )  # fmt: skip
        states = [c.status for c in (database, nats_health, devices, projectors, components.parts, components.scheduler)]
        return DetailedHealth(
            status=max(states, key=_ORDER.__getitem__),
            timestamp=self.clock.now(),
            components=components,
            uptime_seconds=int(time.monotonic() - self.started),
            memory_usage_mb=round(_PROCESS.memory_info().rss / 1_048_576, 1),
            cpu_usage_percent=round(_PROCESS.cpu_percent(None), 1),
        )

    async def _bounded(self, check: Awaitable[Any], failed: Callable[[str], Any]) -> Any:
        try:
            async with asyncio.timeout(CHECK_S):
                return await check
        except TimeoutError:
            return failed(f"no answer within {CHECK_S:g} s")
        except (psycopg.Error, OSError, nats.errors.Error, nats.js.errors.Error) as exc:
            return failed(describe(exc))

    async def _database(self, newest: int) -> DatabaseHealth:
        began = time.perf_counter()
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
            elapsed = (time.perf_counter() - began) * 1000
            cur = await conn.execute(
                "SELECT pg_database_size(current_database()), "
                f"(SELECT count(*) FROM {DEVICES_TABLE} WHERE NOT removed), "
                "(SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s))",
                (READINGS.name,),
            )
            row: Any = await cur.fetchone()
        details = DatabaseDetails(size_mb=round(row[0] / 1_048_576, 1), events_stored=newest, device_count=row[1],
                                  reading_count=int(row[2] or 0))  # fmt: skip
        if elapsed > SLOW_DATABASE_MS:
            return DatabaseHealth(status="degraded", reason=f"a query took {elapsed:.0f} ms",
                                  response_time_ms=round(elapsed, 1), details=details)  # fmt: skip
        return DatabaseHealth(status="healthy", response_time_ms=round(elapsed, 1), details=details)

    async def _nats(self, newest: int | None) -> NatsHealth:
        relay = None
        if newest is not None:
            async with self.pool.connection() as conn:
                relay = await relay_status(conn, self.stream_name, newest)
        fields: dict[str, Any] = {"stream": self.stream_name}
        if relay is not None:
            fields.update(relay_position=relay.position, relay_lag=relay.lag, relay_rejected=relay.rejected)
        if self.fanout is None or not self.fanout.nc.is_connected:
            return NatsHealth(status="unhealthy", reason="not connected to NATS", connected=False, **fields)
        info = await self.fanout.js.stream_info(self.stream_name)
        messages = info.state.messages
        if relay is not None and relay.lag > RELAY_LAG_DEGRADED:
            return NatsHealth(status="degraded", reason=f"the relay is {relay.lag} events behind the event store",
                              connected=True, stream_messages=messages, **fields)  # fmt: skip
        if relay is not None and relay.rejected:
            return NatsHealth(status="degraded", reason=f"JetStream refused {relay.rejected} events for good",
                              connected=True, stream_messages=messages, **fields)  # fmt: skip
        return NatsHealth(status="healthy", connected=True, stream_messages=messages, **fields)

    async def _devices(self) -> DeviceManagerHealth:
        interval = await self.polling_interval()
        stale = self.clock.now() - timedelta(seconds=3 * interval)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE online AND last_seen >= %(stale)s), "
                "count(*) FILTER (WHERE online AND (last_seen IS NULL OR last_seen < %(stale)s)), "
                f"count(*) FILTER (WHERE NOT online), max(last_seen) FROM {DEVICES_TABLE} WHERE NOT removed",
                {"stale": stale},
            )
            row: Any = await cur.fetchone()
        ok, failed, offline, last = int(row[0]), int(row[1]), int(row[2]), row[3]
        counts = {"connected_devices": ok, "failed_devices": failed, "offline_devices": offline, "last_cycle": last}
        if ok + failed + offline and not ok:
            reason = ("no device answered within three polling intervals: is a poller running?" if failed
                      else "every device is offline")  # fmt: skip
            return DeviceManagerHealth(status="degraded", reason=reason, **counts)
        return DeviceManagerHealth(status="healthy", **counts)

    async def _projectors(self, newest: int | None) -> ProjectorsHealth:
        async with self.pool.connection() as conn:
            statuses = await projector_status(conn, newest or 0)
        models = [ReadModelHealth(name=s.name, state=s.state, lag=s.lag, quarantined=s.quarantined,
                                  last_error=s.last_error) for s in statuses]  # fmt: skip
        failing = [m.name for m in models if m.state == "failing"]
        degraded = [m.name for m in models if m.state == "degraded"]
        if failing:
            return ProjectorsHealth(status="degraded", reason=f"failing: {', '.join(failing)}", read_models=models)
        if degraded:
            return ProjectorsHealth(status="degraded", reason=f"events quarantined by {', '.join(degraded)}",
                                    read_models=models)  # fmt: skip
        return ProjectorsHealth(status="healthy", read_models=models)

    def _parts(self) -> PartsHealth:
        parts = [PartHealth(name=p.name, state=p.state, restarts=p.restarts, last_error=p.last_error)
                 for p in self.parts()]  # fmt: skip
        troubled = [p.name for p in parts if p.state != "running"]
        if troubled:
            return PartsHealth(status="degraded", reason=f"not running: {', '.join(troubled)}", parts=parts)
        return PartsHealth(status="healthy", parts=parts)

    def _scheduler(self) -> SchedulerHealth:
        jobs = self.jobs()
        failed = [j.name for j in jobs if j.last_error]
        return SchedulerHealth(
            status="degraded" if failed else "healthy",
            reason=f"last run failed: {', '.join(failed)}" if failed else None,
            jobs_pending=sum(j.state == "pending" for j in jobs),
            jobs_running=sum(j.state == "running" for j in jobs),
            jobs=jobs,
        )
