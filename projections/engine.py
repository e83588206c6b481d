"""The projection engine: many read models fed from one read of the notification log.

Each pass reads one large section of the log, starting at the lowest position
among the projectors, and decodes it once. Every projector then gets the events
after its own position and commits its rows and its tracking position in one
transaction of its own, so a projector that fails rolls back alone, is retried
with backoff, and does not hold the others back.

Each projector declares a schema `version`; the tracking table records the
version its tables were built with. `setup()` drops, recreates and replays from
zero any read model whose version differs or whose tables are missing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import msgspec.inspect as mi
import psycopg
import structlog
from eventsourcing.persistence import Notification
from psycopg.types.json import Jsonb

from adapters.eventstore import WattLedger

log = structlog.get_logger(__name__)

READ_SCHEMA = "wl_read"
TRACKING = f"{READ_SCHEMA}.projector_tracking"

# Serialises set-up between processes starting at once (an arbitrary constant key).
_SETUP_LOCK = 0x574C_5052

# The tracking table is the engine's own; columns added since its first version
# are added in place so an existing deployment keeps its rows (and, with no
# recorded version, rebuilds its read models once).
TRACKING_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {READ_SCHEMA};
CREATE TABLE IF NOT EXISTS {TRACKING} (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE {TRACKING}
    ADD COLUMN IF NOT EXISTS version integer,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS failing_since timestamptz,
    ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
"""

_CLEARED = "last_error = NULL, failed_at = NULL, failing_since = NULL, attempts = 0"

R = TypeVar("R", bound=msgspec.Struct)

_SQL_TYPES: dict[type[mi.Type], str] = {
    mi.UUIDType: "uuid",
    mi.StrType: "text",
    mi.LiteralType: "text",
    mi.BoolType: "boolean",
    mi.IntType: "bigint",
    mi.FloatType: "double precision",
    mi.DecimalType: "numeric",
    mi.DateType: "date",
    mi.DateTimeType: "timestamptz",
}


def _column_type(field: mi.Field) -> str:
    """The SQL type of a row field: scalars map to columns, anything structured is jsonb."""
    kind = field.type
    nullable = False
    if isinstance(kind, mi.UnionType):
        options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        nullable = len(options) < len(kind.types)
        kind = options[0] if len(options) == 1 else mi.AnyType()
    sql_type = _SQL_TYPES.get(type(kind), "jsonb")
    return sql_type if nullable else f"{sql_type} NOT NULL"


def _json(value: Any) -> Jsonb:
    return Jsonb(value, dumps=msgspec.json.encode)


class Table(Generic[R]):
    """A read-model table declared by its row Struct alone.

    The column names, their SQL types (nullable where the field may be None,
    jsonb for structured fields), the DDL, the select and the upsert all come
    from the Struct's fields, in their order.
    """

    def __init__(
        self, name: str, row: type[R], *, key: str, unique: Sequence[str] = (), indexes: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.row = row
        self.key = key
        info = mi.type_info(row)
        assert isinstance(info, mi.StructType)
        self.columns = tuple(f.name for f in info.fields)
        types = {f.name: _column_type(f) for f in info.fields}
        self._json = frozenset(name for name, sql_type in types.items() if sql_type.startswith("jsonb"))
        constraints = [f"PRIMARY KEY ({key})"] + [f"UNIQUE ({column})" for column in unique]
        self.ddl = (
            f"CREATE TABLE {name} (\n    "
            + ",\n    ".join([f"{c} {types[c]}" for c in self.columns] + constraints)
            + "\n)"
        )
        self.indexes = tuple(indexes)
        self.select = f"SELECT {', '.join(self.columns)} FROM {name}"
        self.upsert = (
            f"INSERT INTO {name} ({', '.join(self.columns)}) VALUES ({', '.join('%s' for _ in self.columns)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != key)
        )

    def create(self, cur: psycopg.Cursor[Any]) -> None:
        """Drop the table if it exists and create it afresh from the declaration."""
        cur.execute(f"DROP TABLE IF EXISTS {self.name} CASCADE")
        cur.execute(self.ddl)
        for index in self.indexes:
            cur.execute(index)

    def values(self, row: R) -> tuple[Any, ...]:
        """The parameters of `upsert` for one row."""
        return tuple(
            _json(value) if column in self._json else value
            for column, value in zip(self.columns, msgspec.structs.astuple(row), strict=True)
        )

    def decode(self, record: Sequence[Any]) -> R:
        """A row Struct from a record selected with `select`."""
        return msgspec.convert(dict(zip(self.columns, record, strict=True)), self.row)


class Projector(Protocol):
    """A read model: its versioned tables and how a batch of events changes them."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int:
        """Bumped whenever the tables or the meaning of their rows change: the read model is rebuilt."""
        ...

    @property
    def tables(self) -> Sequence[Table[Any]]: ...

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        """Apply events in log order; called inside the transaction that also saves the position."""
        ...


class ProjectorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far a read model is, and whether it is failing."""

    name: str
    version: int
    position: int
    lag: int
    last_error: str | None
    failing_since: datetime | None


async def projector_status(conn: psycopg.AsyncConnection[Any], max_notification_id: int) -> list[ProjectorStatus]:
    """Every read model's version, position and lag behind `max_notification_id`, with its failure if any."""
    cur = await conn.execute(
        f"SELECT name, coalesce(version, 0), position, last_error, failing_since FROM {TRACKING} ORDER BY name"
    )
    return [
        ProjectorStatus(
            name=name,
            version=version,
            position=position,
            lag=max(max_notification_id - position, 0),
            last_error=last_error,
            failing_since=failing_since,
        )
        for name, version, position, last_error, failing_since in await cur.fetchall()
    ]


class _Section(msgspec.Struct, frozen=True):
    """Notifications read after `after`, decoded once for every projector."""

    after: int
    ids: list[int]
    events: list[object]


class ProjectionEngine:
    """Keeps read models current with the WattLedger event log.

    Two engines on one database serialise on the tracking row lock; a projector
    whose position moved under it (another engine, a rebuild) is skipped in that
    pass and resumes from its new position in the next.
    """

    def __init__(
        self,
        app: WattLedger,
        database_url: str,
        projectors: Sequence[Projector],
        *,
        batch_size: int = 2000,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.app = app
        self.database_url = database_url
        self.projectors = {p.name: p for p in projectors}
        if len(self.projectors) != len(projectors):
            raise ValueError("projector names must be unique")
        self.batch_size = batch_size
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()

    def _connection(self) -> psycopg.Connection[Any]:
        """One connection kept between batches (idle polls would otherwise connect twice a second)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def setup(self) -> None:
        """Create the tracking table; rebuild the tables of every read model whose version changed."""
        with self._lock, psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            cur.execute(TRACKING_DDL)
            cur.execute(f"SELECT name, version FROM {TRACKING}")
            recorded: dict[str, int | None] = dict(cur.fetchall())
            for projector in self.projectors.values():
                missing = [t.name for t in projector.tables if not self._exists(cur, t.name)]
                if projector.name not in recorded:
                    log.info("projector.created", projector=projector.name, version=projector.version)
                elif recorded[projector.name] != projector.version or missing:
                    log.warning(
                        "projector.schema_rebuild",
                        projector=projector.name,
                        recorded_version=recorded[projector.name],
                        version=projector.version,
                        missing_tables=missing,
                    )
                else:
                    continue
                self._reset(cur, projector)

    @staticmethod
    def _exists(cur: psycopg.Cursor[Any], table: str) -> bool:
        row = cur.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        return row is not None and row[0] is not None

    def _reset(self, cur: psycopg.Cursor[Any], projector: Projector) -> None:
        """Fresh tables and position zero, in the caller's transaction."""
        for table in projector.tables:
            table.create(cur)
        cur.execute(
            f"INSERT INTO {TRACKING} (name, version, position) VALUES (%s, %s, 0) "
            f"ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = 0, "
            f"updated_at = now(), {_CLEARED}",
            (projector.name, projector.version),
        )
        self._failures.pop(projector.name, None)
        self._retry_at.pop(projector.name, None)

    def position(self, name: str) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(f"SELECT position FROM {TRACKING} WHERE name = %s", (name,)).fetchone()
        return int(row[0]) if row else 0

    def project_batch(
        self, names: Collection[str] | None = None, *, raise_errors: bool = False
    ) -> tuple[int, dict[str, int]]:
        """One pass: read and decode one section of the log, hand each projector its part.

        Returns the notifications read (0 at the end of the log) and the events
        applied per projector. A projector that fails is rolled back and recorded;
        with `raise_errors` its exception is raised after that.
        """
        chosen = list(self.projectors) if names is None else list(names)
        if not chosen:
            return 0, {}
        with self._lock:
            conn = self._connection()
            cur = conn.execute(f"SELECT name, position FROM {TRACKING} WHERE name = ANY(%s)", (chosen,))
            positions: dict[str, int] = dict(cur.fetchall())
            if unknown := set(chosen) - set(positions):
                raise LookupError(f"read models not set up: {', '.join(sorted(unknown))}; run setup() first")
            section = self._read(min(positions.values()), chosen, raise_errors)
            if section is None:
                return 0, {}
            applied = {name: self._apply(conn, name, section, raise_errors) for name in chosen}
            return len(section.ids), applied

    def _read(self, after: int, names: Sequence[str], raise_errors: bool) -> _Section | None:
        notifications: Sequence[Notification] = self.app.recorder.select_notifications(
            start=after, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return None
        try:
            events: list[object] = [self.app.mapper.to_domain_event(n) for n in notifications]
        except Exception as error:
            # An event nobody can decode stops every projector behind it.
            for name in names:
                self._failed(self._connection(), name, error)
            if raise_errors:
                raise
            return None
        return _Section(after, [n.id for n in notifications], events)

    def _apply(self, conn: psycopg.Connection[Any], name: str, section: _Section, raise_errors: bool) -> int:
        projector = self.projectors[name]
        try:
            with conn.transaction(), conn.cursor() as cur:
                row = cur.execute(f"SELECT position FROM {TRACKING} WHERE name = %s FOR UPDATE", (name,)).fetchone()
                position = int(row[0]) if row else 0
                if position < section.after:
                    return 0
                first = bisect_right(section.ids, position)
                if first == len(section.ids):
                    return 0
                projector.apply_batch(cur, section.events[first:])
                cur.execute(
                    f"UPDATE {TRACKING} SET position = %s, updated_at = now(), {_CLEARED} WHERE name = %s",
                    (section.ids[-1], name),
                )
        except Exception as error:
            if conn.broken:
                raise
            self._failed(conn, name, error)
            if raise_errors:
                raise
            return 0
        if self._failures.pop(name, None):
            self._retry_at.pop(name, None)
            log.info("projector.recovered", projector=name)
        return len(section.ids) - first

    def _failed(self, conn: psycopg.Connection[Any], name: str, error: BaseException) -> None:
        """Record a failure in the projector's tracking row and schedule its retry."""
        attempts = self._failures[name] = self._failures.get(name, 0) + 1
        delay = min(self.retry_base * 2 ** (attempts - 1), self.retry_max)
        self._retry_at[name] = self._clock() + delay
        text = f"{type(error).__name__}: {error}"[:2000]
        with conn.transaction():
            conn.execute(
                f"UPDATE {TRACKING} SET last_error = %s, failed_at = now(), "
                f"failing_since = coalesce(failing_since, now()), attempts = attempts + 1 WHERE name = %s",
                (text, name),
            )
        log.error("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, error=text)

    def due(self) -> list[str]:
        """The projectors not waiting out a backoff."""
        now = self._clock()
        return [name for name in self.projectors if self._retry_at.get(name, now) <= now]

    def catch_up(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Project one read model until the log's end; returns the events applied. Raises its failure."""
        total = 0
        while True:
            read, applied = self.project_batch([name], raise_errors=True)
            if not read:
                return total
            total += applied.get(name, 0)
            if progress and applied.get(name):
                progress(applied[name])

    def catch_up_all(self) -> dict[str, int]:
        """Project every read model not in backoff until the log's end; returns the events applied to each."""
        totals: dict[str, int] = {}

        def add(applied: dict[str, int]) -> None:
            for name, count in applied.items():
                totals[name] = totals.get(name, 0) + count

        while due := self.due():
            read, applied = self.project_batch(due)
            if not read:
                break
            add(applied)
            # A read model replaying from far behind sets where each section
            # starts; the ones ahead of it get a section of their own, so they
            # stay current while it catches up.
            ahead = [name for name in self.due() if name in due and not applied.get(name)]
            if ahead and len(ahead) < len(due):
                add(self.project_batch(ahead)[1])
        return totals

    def rebuild(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """Recreate one read model's tables and replay it from the first event."""
        projector = self.projectors[name]
        with self._lock, psycopg.connect(self.database_url) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SELECT position FROM {TRACKING} WHERE name = %s FOR UPDATE", (name,))
            self._reset(cur, projector)
        log.info("projector.rebuild.started", projector=name)
        return self.catch_up(name, progress)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, poll_interval: float = 0.5) -> None:
        """Keep every read model current: woken by `wake()`, and polling as a fallback."""
        await asyncio.to_thread(self.setup)
        while True:
            self._wakeup.clear()
            try:
                applied = await asyncio.to_thread(self.catch_up_all)
                for name, count in applied.items():
                    if count:
                        log.debug("projector.applied", projector=name, events=count)
            except Exception:
                # The database or the log failed, not one projector: the next pass retries.
                log.exception("projector.pass_failed")
            try:
                await asyncio.wait_for(self._wakeup.wait(), poll_interval)
            except TimeoutError:
                pass
