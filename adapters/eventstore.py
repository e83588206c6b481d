"""The event store: the eventsourcing library on PostgreSQL, and the store port over it.

`WattLedger` is the library's application object and holds only persistence
wiring (settings, transcodings). `StoreUnitOfWork` implements the domain's
`EventStore` port on it: loads and saves run in a worker thread, because the
library is synchronous, and a conflict with another writer becomes the domain's
`ConcurrencyConflict`. A caching unit of work (the poller's) keeps aggregates
between calls; it forgets every aggregate of a failed save. `UnpipelinedRecorder`
is the library's recorder with inserts that cannot hang, whatever a save holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import date, datetime, timezone
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import psycopg
import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    JSONTranscoder,
    Mapper,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Transcoding,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg import sql

from adapters.stored_form import CompactMapper, CompactTranscoder
from domain.commands import PollResult
from domain.device import Device
from domain.errors import ConcurrencyConflict
from domain.meter import MeterDay, meter_day_id
from domain.ports import Clock, EventStore
from domain.readings import OutletReading

__all__ = [
    "EVENTS_SCHEMA",
    "SNAPSHOT_EVERY",
    "PollResult",
    "StoreUnitOfWork",
    "SystemClock",
    "UnpipelinedRecorder",
    "WattLedger",
    "ensure_events_schema",
    "store_env",
]

EVENTS_SCHEMA = "wl_events"

log = structlog.get_logger(__name__)

A = TypeVar("A", bound=Aggregate)


class OutletReadingAsDict(Transcoding):
    type = OutletReading
    name = "outlet_reading"

    def encode(self, obj: OutletReading) -> dict[str, Any]:
        return msgspec.structs.asdict(obj)

    def decode(self, data: dict[str, Any]) -> OutletReading:
        return OutletReading(**data)


class UnpipelinedRecorder(PostgresApplicationRecorder):
    """The library's PostgreSQL recorder, inserting each save by COPY, without psycopg's pipeline mode.

    In pipeline mode psycopg 3.3 stops writing once its queue of commands is
    empty, even when libpq still holds part of the last one, and then waits for
    results: a save whose insert outgrows what the socket takes at once (from
    about 15,000 readings over loopback TCP) leaves the server waiting for the rest of
    the statement (`ClientRead`) and the client in `Pipeline.sync()`, for good.
    Outside a pipeline psycopg writes the whole statement before it reads.

    The library's contract is kept, in one transaction: the table lock (EXCLUSIVE, with
    its lock timeout), the notification, then the rows, so notification ids are given in
    commit order with no reader passing over a gap. The rows go in by binary COPY
    instead of one INSERT of an array of composite values, whose client-side encoding
    alone took most of a large save, all of it under the table lock: COPY is about five
    times faster and keeps the lock for that much less. COPY takes each row's
    notification id from the sequence in the order written; under the lock no other
    writer takes one, so the ids are those above the table's highest before the copy,
    read back in order (`_copy_events`).
    """

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if self.datastore.enable_db_functions:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return None
            self._lock_table(curs)
            self._notify_channel(curs)
            return self._copy_events(curs, stored_events)

    def _copy_events(self, curs: Any, stored_events: Sequence[StoredEvent]) -> list[int]:
        """COPY the rows (table already locked); their notification ids, in the order of `stored_events`."""
        table = sql.SQL("{}.{}").format(sql.Identifier(self.datastore.schema), sql.Identifier(self.events_table_name))
        curs.execute(sql.SQL("SELECT coalesce(max(notification_id), 0) AS top FROM {}").format(table))
        row = curs.fetchone()
        before = int(row["top"] if isinstance(row, Mapping) else row[0])
        statement = sql.SQL(
            "COPY {} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        ).format(table)
        with curs.copy(statement) as copy:
            copy.set_types([self.datastore.originator_id_type, "int8", "text", "bytea"])
            for event in stored_events:
                copy.write_row((event.originator_id, event.originator_version, event.topic, event.state))
        curs.execute(
            sql.SQL("SELECT notification_id FROM {} WHERE notification_id > %s ORDER BY notification_id").format(table),
            (before,),
        )
        ids = [int(r["notification_id"] if isinstance(r, Mapping) else r[0]) for r in curs.fetchall()]
        if len(ids) != len(stored_events):
            raise ProgrammingError(f"copied {len(stored_events)} events but found {len(ids)} new notification ids")
        return ids


def store_env(database_url: str, *, pool_size: int = 5) -> dict[str, str]:
    """The eventsourcing settings for a libpq URL (host may be a socket directory)."""
    parts = psycopg.conninfo.conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:UnpipelinedRecorder",
        "POSTGRES_DBNAME": str(parts.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(parts.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(parts.get("port") or "5432"),
        "POSTGRES_USER": str(parts.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(parts.get("password") or ""),
        "POSTGRES_SCHEMA": EVENTS_SCHEMA,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_LOCK_TIMEOUT": "10",
        # A connection the server ended (restart, failover, idle timeout) is replaced, not used.
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_CONNECT_TIMEOUT": "10",
    }


def ensure_events_schema(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(EVENTS_SCHEMA)))


SETUP_LOCK = "wattledger.events_setup"
"""The advisory lock held while the library creates or checks the event store's tables and functions."""


@contextlib.contextmanager
def _one_setup_at_a_time(env: Mapping[str, str]) -> Iterator[None]:
    """Hold SETUP_LOCK (on a connection of its own) while the store's tables are created or checked.

    The library creates its tables and replaces its functions at every start; two processes doing
    that at once (the API, the relay and a poller started together, or the processes of a parallel
    rebuild) can fail with PostgreSQL's "tuple concurrently updated". A store that cannot be reached
    here is left to the library, whose own attempt raises the error its callers handle.
    """
    if env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        yield
        return
    conninfo = psycopg.conninfo.make_conninfo(
        host=env.get("POSTGRES_HOST", "127.0.0.1"),
        port=env.get("POSTGRES_PORT", "5432"),
        dbname=env.get("POSTGRES_DBNAME", "postgres"),
        user=env.get("POSTGRES_USER", "postgres"),
        password=env.get("POSTGRES_PASSWORD", ""),
        connect_timeout=env.get("POSTGRES_CONNECT_TIMEOUT", "10"),
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error:
        yield
        return
    try:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (SETUP_LOCK,))
    except psycopg.Error:
        conn.close()
        yield
        return
    try:
        yield
    finally:
        # Closing the session lets go of its lock.
        with contextlib.suppress(psycopg.Error):
            conn.close()


SNAPSHOT_EVERY = 200
"""Events of a meter day between two of its snapshots: a load reads one snapshot and fewer events than this."""


class WattLedger(Application[UUID]):
    """The event log of the system: persistence wiring only; decisions live in `domain.handlers`.

    A meter day is snapshotted at every SNAPSHOT_EVERY-th version, in the save that reaches it,
    so loading one never replays the whole day. Snapshots are a cache of the events (the
    `snapshots` table beside the events): losing them changes nothing but the time of a load.
    """

    name = "WattLedger"
    snapshotting_intervals = {MeterDay: SNAPSHOT_EVERY}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        settings = dict(env or {})
        with _one_setup_at_a_time(settings):
            super().__init__(settings)

    def construct_transcoder(self) -> CompactTranscoder:
        transcoder = CompactTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_mapper(self) -> Mapper[UUID]:
        """Readings, meter days and their snapshots are stored compact (`adapters.stored_form`), the rest as JSON."""
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=CompactMapper)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(OutletReadingAsDict())

    def load(self, aggregate_id: UUID) -> Aggregate | None:
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot each saved aggregate whose events in this save reached a multiple of its interval.

        The library loads the aggregate again at that version for each snapshot; the aggregate
        just saved already holds the state, at its newest version, so it is snapshotted as it is
        (a snapshot may be at any version), all in one insert. The events are stored by then: a
        snapshot that cannot be stored is one warning line, and the next interval takes another.
        """
        if self.snapshots is None:
            return
        due: dict[UUID, Aggregate] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate)) if aggregate is not None else None
            if isinstance(aggregate, Aggregate) and interval and event.originator_version % interval == 0:
                due[aggregate.id] = aggregate
        snapshots = [type(a).Snapshot.take(a) for a in due.values()]
        if not snapshots:
            return
        try:
            self.snapshots.put(snapshots)
        except PersistenceError as exc:
            log.warning("eventstore.snapshot_not_stored", aggregates=len(snapshots), error=repr(exc))

    def recorded_times(self, meter_id: UUID) -> frozenset[datetime]:
        """The timestamps of every reading stored in one meter day stream, read from its events."""
        return frozenset(e.measured_at for e in self.events.get(meter_id) if isinstance(e, MeterDay.ReadingRecorded))

    def store(self, *aggregates: Aggregate) -> int:
        """Save in one transaction; returns the last notification id. Raises ConcurrencyConflict."""
        try:
            recordings = self.save(*aggregates)
        except IntegrityError as exc:
            raise ConcurrencyConflict("another writer changed the same aggregate first") from exc
        return max((r.notification.id for r in recordings), default=0)


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class WriteMarker:
    """Set once anything of the current request or job was handed to the store for saving."""

    __slots__ = ("wrote",)

    def __init__(self) -> None:
        self.wrote = False


_WRITES: ContextVar[WriteMarker | None] = ContextVar("wattledger_writes", default=None)


def note_write() -> None:
    """Record, for whoever watches this context, that something is being handed to the store."""
    marker = _WRITES.get()
    if marker is not None:
        marker.wrote = True


def watch_writes() -> WriteMarker:
    """A fresh marker for what runs from here in this context (threads started from it included)."""
    marker = WriteMarker()
    _WRITES.set(marker)
    return marker


class StoreUnitOfWork(EventStore):
    """The domain's `EventStore` port over a `WattLedger` application.

    With `cache=True` loaded aggregates are kept and reused by later calls, which
    makes a poll cycle's store several times faster; only one writer may then use
    the instance at a time (the poller's store loop). Meter days older than the
    newest one loaded are dropped from the cache.
    """

    def __init__(self, app: WattLedger, *, cache: bool = False) -> None:
        self.app = app
        self.cache = cache
        self._devices: dict[UUID, Device] = {}
        self._meters: dict[UUID, MeterDay] = {}

    async def device(self, device_id: UUID) -> Device | None:
        if (cached := self._devices.get(device_id)) is not None:
            return cached
        loaded = await asyncio.to_thread(self.app.load, device_id)
        if loaded is None:
            return None
        if not isinstance(loaded, Device):
            raise TypeError(f"aggregate {device_id} is a {type(loaded).__name__}, not a Device")
        if self.cache:
            self._devices[device_id] = loaded
        return loaded

    async def meter_day(self, device_id: UUID, day: date) -> MeterDay | None:
        stream_id = meter_day_id(device_id, day)
        if (cached := self._meters.get(stream_id)) is not None:
            return cached
        loaded = await asyncio.to_thread(self.app.load, stream_id)
        if loaded is not None and not isinstance(loaded, MeterDay):
            raise TypeError(f"aggregate {stream_id} is a {type(loaded).__name__}, not a MeterDay")
        return loaded

    async def recorded_times(self, meter_id: UUID) -> frozenset[datetime]:
        return await asyncio.to_thread(self.app.recorded_times, meter_id)

    async def aggregate(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        loaded = await asyncio.to_thread(self.app.load, aggregate_id)
        if loaded is not None and not isinstance(loaded, kind):
            raise TypeError(f"aggregate {aggregate_id} is a {type(loaded).__name__}, not a {kind.__name__}")
        return loaded

    async def save(self, *aggregates: Aggregate) -> int:
        note_write()
        try:
            position = await asyncio.to_thread(self.app.store, *aggregates)
        except BaseException:
            self._forget(aggregates)
            raise
        if self.cache:
            self._keep(aggregates)
        return position

    def forget_all(self) -> None:
        self._devices.clear()
        self._meters.clear()

    def _forget(self, aggregates: tuple[Aggregate, ...]) -> None:
        for aggregate in aggregates:
            self._devices.pop(aggregate.id, None)
            self._meters.pop(aggregate.id, None)

    def _keep(self, aggregates: tuple[Aggregate, ...]) -> None:
        newest = max((a.day for a in aggregates if isinstance(a, MeterDay)), default=None)
        if newest is not None and any(m.day < newest for m in self._meters.values()):
            self._meters = {k: m for k, m in self._meters.items() if m.day >= newest}
        for aggregate in aggregates:
            if isinstance(aggregate, Device):
                self._devices[aggregate.id] = aggregate
            elif isinstance(aggregate, MeterDay) and (newest is None or aggregate.day >= newest):
                self._meters[aggregate.id] = aggregate
