"""The projection engine: many read models fed from one read of the notification log.

Each pass reads one large section of the log, starting at the lowest position
among the projectors, and decodes it once. Every projector then gets the events
after its own position and commits its rows and its tracking position in one
transaction of its own, so a projector that fails rolls back alone, is retried
with backoff, and does not hold the others back.

Each projector declares a schema `version`; the tracking table records the
version its tables were built with. `setup()` drops, recreates and replays from
zero any read model whose version differs or whose tables are missing (in
place: the old tables cannot answer for the new version anyway).

An event a read model cannot apply never holds up the events behind it. A section
that fails with a data error (one PostgreSQL refuses, such as a NUL in text, or a
value the projector cannot use) is applied again in halves, each under a
savepoint, down to the one event that fails alone; that event is quarantined
(`wl_read.projector_quarantine`: read model, position, event, error) and the read
model goes on past it. An event that cannot even be decoded is quarantined for
every read model. Transient faults (a lost connection, a serialization failure, a
lock timeout) and bugs (any other exception) quarantine nothing: the read model
is rolled back and retried with backoff. `retry()` replays the read models that
have quarantined events from zero, so the events that now apply land in order.

`rebuild_many()` replays read models from zero into fresh tables in a shadow
schema while the live tables keep answering queries and the live engine keeps
projecting into them; when the replay has caught up it locks the read models'
tracking rows, replays the last events and swaps the fresh tables in, all in
one transaction. `verify()` builds the same shadow and compares it with the
live tables row by row instead of swapping. Projectors name their tables only
through their `Table` objects, which point at the shadow while it is built.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar
from uuid import UUID

import eventsourcing.persistence as es
import msgspec
import msgspec.inspect as mi
import psycopg
import structlog
from eventsourcing.persistence import Notification
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from domain.text import escape_text

log = structlog.get_logger(__name__)

READ_SCHEMA = "wl_read"
TRACKING = f"{READ_SCHEMA}.projector_tracking"
QUARANTINE = f"{READ_SCHEMA}.projector_quarantine"

# Serialises set-up between processes starting at once (an arbitrary constant key).
_SETUP_LOCK = 0x574C_5052
# With a read model's name hashed, keeps two replays of one read model apart.
_REPLAY_LOCK = 0x574C_5242

SHADOW_SCHEMA = "wl_rebuild"
"""Where `rebuild` builds fresh tables before they are swapped into their home schema."""
VERIFY_SCHEMA = "wl_verify"
"""Where `verify` builds the tables it compares with the live ones (dropped afterwards)."""

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
CREATE TABLE IF NOT EXISTS {QUARANTINE} (
    projector text NOT NULL,
    position bigint NOT NULL,
    originator_id uuid NOT NULL,
    originator_version bigint NOT NULL,
    topic text NOT NULL,
    error text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, position)
);
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


class _Target(NamedTuple):
    """Where the tables of the read models being built live while `building` is in effect."""

    schema: str
    tables: frozenset[int]


_TARGET: ContextVar[_Target | None] = ContextVar("wattledger_projection_target", default=None)


@contextmanager
def building(schema: str, tables: Collection[Table[Any]]) -> Iterator[None]:
    """While inside, `tables` name themselves in `schema` (a rebuild's shadow schema), in this context only.

    Every other table, and every other thread or task, keeps naming the live tables,
    so readers are never pointed at a half-built read model.
    """
    token = _TARGET.set(_Target(schema, frozenset(id(t) for t in tables)))
    try:
        yield
    finally:
        _TARGET.reset(token)


class Table(Generic[R]):
    """A read-model table declared by its row Struct alone.

    The column names, their SQL types (nullable where the field may be None,
    jsonb for structured fields), the DDL, the select and the upsert all come
    from the Struct's fields, in their order.

    `name` may be bare (`devices`, which lives in `wl_read`) or qualified
    (`wl_read.devices`). Every SQL string the table gives (`name`, `ddl`,
    `select`, `upsert`, `indexes`) is qualified with the schema it currently
    lives in: its home schema, or the shadow schema of a rebuild in progress
    (see `building`). Index DDL may name the table qualified with its home
    schema or bare; either way it lands beside the table being built, and index
    names only need to be unique within a schema.
    """

    def __init__(
        self, name: str, row: type[R], *, key: str, unique: Sequence[str] = (), indexes: Sequence[str] = ()
    ) -> None:
        home, _, bare = name.rpartition(".")
        self.home = home or READ_SCHEMA
        self.bare = bare
        self.row = row
        self.key = key
        info = mi.type_info(row)
        assert isinstance(info, mi.StructType)
        self.columns = tuple(f.name for f in info.fields)
        types = {f.name: _column_type(f) for f in info.fields}
        self._json = frozenset(name for name, sql_type in types.items() if sql_type.startswith("jsonb"))
        constraints = [f"PRIMARY KEY ({key})"] + [f"UNIQUE ({column})" for column in unique]
        self._body = " (\n    " + ",\n    ".join([f"{c} {types[c]}" for c in self.columns] + constraints) + "\n)"
        self._indexes = tuple(indexes)
        self._home_name = re.compile(rf"(?<![\w.\"]){re.escape(self.home)}\.{re.escape(bare)}(?![\w\"])")
        self._upsert_tail = (
            f" ({', '.join(self.columns)}) VALUES ({', '.join('%s' for _ in self.columns)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c != key)
        )

    @property
    def schema(self) -> str:
        """The schema the table lives in for the caller: its home, or the shadow it is being rebuilt in."""
        target = _TARGET.get()
        return target.schema if target is not None and id(self) in target.tables else self.home

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.bare}"

    @property
    def ddl(self) -> str:
        return f"CREATE TABLE {self.name}{self._body}"

    @property
    def indexes(self) -> tuple[str, ...]:
        schema = self.schema
        if schema == self.home:
            return self._indexes
        return tuple(self._home_name.sub(f"{schema}.{self.bare}", index) for index in self._indexes)

    @property
    def select(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name}"

    @property
    def upsert(self) -> str:
        return f"INSERT INTO {self.name}{self._upsert_tail}"

    def create(self, cur: psycopg.Cursor[Any]) -> None:
        """Drop the table if it exists and create it afresh from the declaration, where it currently lives."""
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


class QuarantinedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a read model could not apply and went on past: where it is in the log, and why."""

    projector: str
    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    error: str
    quarantined_at: datetime


class ProjectorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How far a read model is, whether it is failing, and the events it quarantined.

    `state` is `current`, `failing` (its last attempt failed; it is retried with backoff) or
    `degraded` (it goes on, but `quarantined` events are missing from it until
    `wattledger project --retry` applies them). `quarantine` lists the newest of them.
    """

    name: str
    version: int
    position: int
    lag: int
    last_error: str | None
    failing_since: datetime | None
    state: str = "current"
    quarantined: int = 0
    quarantine: list[QuarantinedEvent] = msgspec.field(default_factory=list)


QUARANTINE_SHOWN = 10
"""Quarantined events listed per read model in its status (the newest; `quarantined` counts them all)."""

_QUARANTINE_COLUMNS = "projector, position, originator_id, originator_version, topic, error, quarantined_at"


async def projector_status(conn: psycopg.AsyncConnection[Any], max_notification_id: int) -> list[ProjectorStatus]:
    """Every read model's version, position and lag behind `max_notification_id`, its failure and quarantine."""
    cur = await conn.execute(
        f"SELECT name, coalesce(version, 0), position, last_error, failing_since FROM {TRACKING} ORDER BY name"
    )
    tracked = await cur.fetchall()
    counts = await quarantine_counts(conn)
    cur = await conn.execute(
        f"SELECT {_QUARANTINE_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY projector "
        f"ORDER BY position DESC) AS n FROM {QUARANTINE}) q WHERE n <= %s ORDER BY projector, position",
        (QUARANTINE_SHOWN,),
    )
    shown: dict[str, list[QuarantinedEvent]] = {}
    for record in await cur.fetchall():
        event = _quarantined(record)
        shown.setdefault(event.projector, []).append(event)
    return [
        ProjectorStatus(
            name=name,
            version=version,
            position=position,
            lag=max(max_notification_id - position, 0),
            last_error=last_error,
            failing_since=failing_since,
            state=_state(last_error, counts.get(name, 0)),
            quarantined=counts.get(name, 0),
            quarantine=shown.get(name, []),
        )
        for name, version, position, last_error, failing_since in tracked
    ]


async def quarantine_counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """How many events each read model has quarantined (read models with none are left out)."""
    cur = await conn.execute(f"SELECT projector, count(*) FROM {QUARANTINE} GROUP BY projector")
    return {name: int(count) for name, count in await cur.fetchall()}


async def projector_states(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    """Each read model's `state` alone (`current`, `failing`, `degraded`), for health checks."""
    counts = await quarantine_counts(conn)
    cur = await conn.execute(f"SELECT name, last_error FROM {TRACKING} ORDER BY name")
    return {name: _state(last_error, counts.get(name, 0)) for name, last_error in await cur.fetchall()}


def _state(last_error: str | None, quarantined: int) -> str:
    if last_error is not None:
        return "failing"
    return "degraded" if quarantined else "current"


def _quarantined(record: Sequence[Any]) -> QuarantinedEvent:
    projector, position, originator_id, version, topic, error, at = record
    return QuarantinedEvent(
        projector=projector, position=position, originator_id=originator_id, originator_version=version,
        topic=topic, error=error, quarantined_at=at,
    )


def quarantined_events(conn: psycopg.Connection[Any], names: Collection[str] | None = None) -> list[QuarantinedEvent]:
    """The events quarantined by `names` (every read model by default), in read model and log order."""
    where, params = ("", ()) if names is None else (" WHERE projector = ANY(%s)", (list(names),))
    records = conn.execute(f"SELECT {_QUARANTINE_COLUMNS} FROM {QUARANTINE}{where} ORDER BY projector, position",
                           params).fetchall()  # fmt: skip
    return [_quarantined(record) for record in records]


# ---- what a failure means ----

_TRANSIENT: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,  # lost connections, serialization failures, deadlocks, lock and statement timeouts
    psycopg.InterfaceError,
    es.OperationalError,
    es.InterfaceError,
    PoolTimeout,
    OSError,
)
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.DataError,  # NUL in text (UntranslatableCharacter), numbers out of range, bad encodings
    psycopg.IntegrityError,
    es.DataError,
    es.IntegrityError,
    ValueError,  # decoding (msgspec, UnicodeError), values a projector cannot use
    TypeError,
    LookupError,
    ArithmeticError,
)


class EngineClosed(RuntimeError):
    """The engine was closed while a pass still ran in a worker thread."""


def expected_fault(error: BaseException) -> bool:
    """Whether `error` says a server was away or busy (retrying may succeed), not that the code or the data is wrong."""
    if isinstance(error, EngineClosed) or isinstance(error, _TRANSIENT):
        return True
    # The event store wraps a driver error in its own classes, keeping the cause.
    return type(error) is es.DatabaseError or (
        isinstance(error, es.PersistenceError) and error.__cause__ is not None and expected_fault(error.__cause__)
    )


def data_error(error: BaseException) -> bool:
    """Whether `error` is about the event being applied (so it fails the same way every time), not a fault."""
    return isinstance(error, _DATA_ERRORS) and not expected_fault(error)


def one_line(error: BaseException, limit: int = 2000) -> str:
    """`Type: message` on one line, escaped, at most `limit` characters: storable in `text` and loggable."""
    return escape_text(f"{type(error).__name__}: {error}".strip())[:limit]


class Undecodable(msgspec.Struct, frozen=True):
    """Stands in a section for a notification whose event could not be decoded."""

    error: str


def decode_notifications(event_log: EventLog, notifications: Sequence[Notification]) -> list[object]:
    """The domain events of `notifications`; one that cannot be decoded is an `Undecodable` in its place."""
    try:
        return list(event_log.decode_all(notifications))
    except Exception:
        pass
    events: list[object] = []
    for notification in notifications:
        try:
            events.append(event_log.decode(notification))
        except Exception as error:
            events.append(Undecodable(one_line(error)))
    return events


def _quarantine(
    projector: str, notification: Notification, error: str
) -> tuple[str, int, UUID, int, str, str]:
    return (projector, notification.id, UUID(str(notification.originator_id)), notification.originator_version,
            notification.topic, error)  # fmt: skip


def apply_isolating(
    cur: psycopg.Cursor[Any], projector: Projector, events: Sequence[object], notifications: Sequence[Notification]
) -> list[tuple[str, int, UUID, int, str, str]]:
    """Apply `events` in the caller's transaction, skipping those that fail alone with a data error.

    Each span is applied under a savepoint; a span that fails with a data error is rolled back
    and applied again in halves until the one event that fails alone is found. That event, and
    any `Undecodable`, is left out and returned as a quarantine row (projector, position,
    originator id and version, topic, error). Any other error (a fault, a bug) is raised.
    """
    found: list[tuple[str, int, UUID, int, str, str]] = []
    start, end = 0, len(events)
    while start < end:
        marker = events[start]
        if isinstance(marker, Undecodable):
            found.append(_quarantine(projector.name, notifications[start], marker.error))
            start += 1
            continue
        stop = next((i for i in range(start, end) if isinstance(events[i], Undecodable)), end)
        failed, error = _apply_span(cur, projector, events, start, stop)
        if error is not None:
            found.append(_quarantine(projector.name, notifications[failed], one_line(error)))
            start = failed + 1
        else:
            start = stop
    return found


def _apply_span(
    cur: psycopg.Cursor[Any], projector: Projector, events: Sequence[object], start: int, stop: int
) -> tuple[int, BaseException | None]:
    """Apply events[start:stop] under savepoints, up to the first one that fails alone with a data error.

    Returns (that event's index, its error), or (stop, None) when all applied."""
    chunk = stop - start
    while start < stop:
        try:
            with cur.connection.transaction():
                projector.apply_batch(cur, events[start:start + chunk])
        except Exception as error:
            if not data_error(error) or cur.connection.broken:
                raise
            if chunk == 1:
                return start, error
            chunk //= 2
            continue
        start += chunk
        chunk = stop - start
    return stop, None


_INSERT_QUARANTINE = (
    f"INSERT INTO {QUARANTINE} (projector, position, originator_id, originator_version, topic, error) "
    f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (projector, position) DO UPDATE SET error = EXCLUDED.error, "
    f"quarantined_at = now()"
)


def _record_quarantine(cur: psycopg.Cursor[Any], rows: Sequence[tuple[str, int, UUID, int, str, str]]) -> None:
    """Insert quarantine rows in the caller's transaction."""
    if rows:
        cur.executemany(_INSERT_QUARANTINE, list(rows))


def _log_quarantine(rows: Sequence[tuple[str, int, UUID, int, str, str]]) -> None:
    """One warning line per event quarantined (once its transaction committed)."""
    for projector, position, originator_id, version, topic, error in rows:
        log.warning("projector.event_quarantined", projector=projector, position=position,
                    originator_id=str(originator_id), originator_version=version, topic=topic, error=error)  # fmt: skip


def _homes(tables: Sequence[Table[Any]]) -> list[str]:
    """The home schemas of `tables`, each once, in order."""
    return list(dict.fromkeys(t.home for t in tables))


def _search_path(cur: psycopg.Cursor[Any], schemas: Sequence[str]) -> None:
    """Point unqualified names at `schemas` for the rest of the caller's transaction."""
    path = sql.SQL(", ").join([*map(sql.Identifier, schemas), sql.Identifier("public")])
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))


class _Section(msgspec.Struct, frozen=True):
    """Notifications read after `after`, decoded once for every projector (`Undecodable` where that failed)."""

    after: int
    ids: list[int]
    events: list[object]
    notifications: list[Any]


class ReplayBusy(RuntimeError):
    """Another rebuild or verify of the same read model holds its replay lock."""


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a replay is: it has read `events` notifications, up to `position` of the log's `head`.

    `head` is the last notification id when last looked at; it grows while
    events keep arriving. `phase` is `replay`, then `swap` or `compare` once
    the tracking rows are locked.
    """

    phase: str
    position: int
    head: int
    events: int


class RowDifference(msgspec.Struct, frozen=True, kw_only=True):
    """One row in which a live read model differs from its replay.

    `missing`: the replay has the row, the live table does not; `extra`: the
    other way round; `changed`: both have it, `columns` name the differing
    columns. `live` and `rebuilt` hold the row's values (None where absent).
    """

    read_model: str
    table: str
    key: dict[str, Any]
    kind: str
    columns: tuple[str, ...] = ()
    live: dict[str, Any] | None = None
    rebuilt: dict[str, Any] | None = None


def _key_columns(table: Table[Any]) -> list[str]:
    return [column.strip() for column in table.key.split(",")]


class _Shadow:
    """Read models replayed from zero into a shadow schema, on one connection held by the replay.

    Every section is read and decoded once and applied to all of the read
    models with their tables pointed at the shadow schema (`building`), and
    committed with nothing else: no reader and no live engine sees these
    tables until `swap` moves them into their home schemas.
    """

    def __init__(
        self, event_log: EventLog, conn: psycopg.Connection[Any], projectors: Sequence[Projector], schema: str,
        batch: int,
    ) -> None:
        self.event_log = event_log
        self.conn = conn
        self.projectors = list(projectors)
        self.schema = schema
        self.batch = batch
        self.tables = [table for projector in self.projectors for table in projector.tables]
        self.names = [projector.name for projector in self.projectors]
        self.position = 0
        self.events = 0
        self.head = 0
        self.quarantined: list[tuple[str, int, UUID, int, str, str]] = []
        self.live_quarantined: list[tuple[str, int, UUID, int, str, str]] = []
        bare = [table.bare for table in self.tables]
        if len(set(bare)) != len(bare):
            raise ValueError(f"tables of {', '.join(self.names)} share a name; they cannot be rebuilt side by side")

    @contextmanager
    def _targeted(self, cur: psycopg.Cursor[Any]) -> Iterator[None]:
        _search_path(cur, [self.schema])
        with building(self.schema, self.tables):
            yield

    def create(self) -> None:
        """The shadow schema and empty tables in it (replacing any a crashed replay left behind)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            with self._targeted(cur):
                for table in self.tables:
                    table.create(cur)

    def drop(self) -> None:
        """Drop whatever shadow tables remain (none after a swap)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            for table in self.tables:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
                    sql.Identifier(self.schema), sql.Identifier(table.bare)
                ))

    def _report(self, progress: Callable[[ReplayProgress], None] | None, phase: str) -> None:
        self.head = max(self.head, self.position, self.event_log.max_id())
        if progress is not None:
            progress(ReplayProgress(phase=phase, position=self.position, head=self.head, events=self.events))

    def _step(self, cur: psycopg.Cursor[Any], until: int | None = None) -> int:
        """Apply the next section (up to `until`) to the shadow tables in the caller's transaction.

        Returns the notifications it held: 0 at the end of the log."""
        notifications = self.event_log.read_raw(self.position, self.batch, stop=until)
        if not notifications:
            return 0
        events = decode_notifications(self.event_log, notifications)
        with self._targeted(cur):
            for projector in self.projectors:
                self.quarantined.extend(apply_isolating(cur, projector, events, notifications))
        self.position = notifications[-1].id
        self.events += len(notifications)
        return len(notifications)

    def catch_up(self, progress: Callable[[ReplayProgress], None] | None) -> None:
        """Replay to the log's head, one committed transaction per section, locking nothing live.

        It stops at the first section shorter than a full one (the head as it was then), so a
        log that keeps growing cannot keep it going; what was stored since is replayed by `swap`
        or `compare` under the tracking locks."""
        self._report(progress, "replay")
        while True:
            with self.conn.transaction(), self.conn.cursor() as cur:
                read = self._step(cur)
            if read:
                self._report(progress, "replay")
            if read < self.batch:
                return

    def _lock_tracking(self, cur: psycopg.Cursor[Any]) -> dict[str, int]:
        """Lock the read models' tracking rows (in name order, so two replays cannot deadlock); their positions."""
        cur.execute(
            f"SELECT name, position FROM {TRACKING} WHERE name = ANY(%s) ORDER BY name FOR UPDATE", (self.names,)
        )
        return {name: int(position) for name, position in cur.fetchall()}

    def swap(self, progress: Callable[[ReplayProgress], None] | None) -> None:
        """In one transaction: hold off the live engine, replay the last events, put the fresh tables in place.

        The live tables are dropped (their indexes with them) and the shadow
        tables moved into their home schemas, and the tracking rows take the
        replay's position and the projectors' versions. Readers wait for the
        commit at most, then see the new tables.
        """
        with self.conn.transaction(), self.conn.cursor() as cur:
            self._lock_tracking(cur)
            while self._step(cur):
                pass
            for schema in _homes(self.tables):
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for table in self.tables:
                bare = sql.Identifier(table.bare)
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(table.home), bare))
                cur.execute(sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                    sql.Identifier(self.schema), bare, sql.Identifier(table.home)
                ))
            for projector in self.projectors:
                cur.execute(
                    f"INSERT INTO {TRACKING} (name, version, position) VALUES (%s, %s, %s) "
                    f"ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position, "
                    f"updated_at = now(), {_CLEARED}",
                    (projector.name, projector.version, self.position),
                )
            # The replay saw every event up to its position: what it quarantined is the whole quarantine.
            cur.execute(f"DELETE FROM {QUARANTINE} WHERE projector = ANY(%s)", (self.names,))
            _record_quarantine(cur, self.quarantined)
        _log_quarantine(self.quarantined)
        self._report(progress, "swap")

    def compare(self, progress: Callable[[ReplayProgress], None] | None) -> list[RowDifference]:
        """Bring shadow and live read models to one position under their tracking locks, then diff every table."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            live = self._lock_tracking(cur)
            target = max([self.event_log.max_id(), self.position, *live.values()])
            while self._step(cur, until=target):
                pass
            for projector in self.projectors:
                self._catch_up_live(cur, projector, live.get(projector.name, 0), target)
            self._report(progress, "compare")
            differences: list[RowDifference] = []
            for projector in self.projectors:
                for table in projector.tables:
                    differences.extend(self._diff(cur, projector.name, table))
        _log_quarantine(self.live_quarantined)
        return differences

    def _catch_up_live(self, cur: psycopg.Cursor[Any], projector: Projector, position: int, target: int) -> None:
        """Project the live read model from `position` to `target`, as the engine would, in the caller's transaction."""
        moved = False
        quarantined: list[tuple[str, int, UUID, int, str, str]] = []
        while notifications := self.event_log.read_raw(position, self.batch, stop=target):
            _search_path(cur, _homes(projector.tables))
            events = decode_notifications(self.event_log, notifications)
            quarantined.extend(apply_isolating(cur, projector, events, notifications))
            position, moved = notifications[-1].id, True
        _record_quarantine(cur, quarantined)
        self.live_quarantined.extend(quarantined)
        if moved:
            cur.execute(
                f"UPDATE {TRACKING} SET position = %s, updated_at = now(), {_CLEARED} WHERE name = %s",
                (position, projector.name),
            )

    def _diff(self, cur: psycopg.Cursor[Any], read_model: str, table: Table[Any]) -> list[RowDifference]:
        """Every row of `table` that differs between its live and shadow copies, by primary key."""
        keys = _key_columns(table)
        bare = sql.Identifier(table.bare)
        live = sql.SQL("{}.{}").format(sql.Identifier(table.home), bare)
        if cur.execute("SELECT to_regclass(%s)", (f"{table.home}.{table.bare}",)).fetchone() == (None,):
            live = sql.SQL("(SELECT * FROM {}.{} WHERE false)").format(sql.Identifier(self.schema), bare)
        rebuilt = sql.SQL("{}.{}").format(sql.Identifier(self.schema), bare)

        def side(alias: str) -> sql.Composable:
            return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c))
                                      for c in table.columns)

        query = sql.SQL(
            "SELECT {l}, {r}, l.{k} IS NULL, r.{k} IS NULL FROM {live} l FULL JOIN {rebuilt} r ON {on} "
            "WHERE ROW({l}) IS DISTINCT FROM ROW({r})"
        ).format(
            l=side("l"), r=side("r"), k=sql.Identifier(keys[0]), live=live, rebuilt=rebuilt,
            on=sql.SQL(" AND ").join(sql.SQL("l.{c} = r.{c}").format(c=sql.Identifier(c)) for c in keys),
        )
        width = len(table.columns)
        found: list[RowDifference] = []
        for record in cur.execute(query):
            ours = dict(zip(table.columns, record[:width], strict=True))
            theirs = dict(zip(table.columns, record[width:2 * width], strict=True))
            no_live, no_rebuilt = record[2 * width], record[2 * width + 1]
            present = theirs if no_live else ours
            key = {c: present[c] for c in keys}
            if no_live:
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="missing",
                                           rebuilt=theirs))
            elif no_rebuilt:
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="extra", live=ours))
            else:
                columns = tuple(c for c in table.columns if ours[c] != theirs[c])
                found.append(RowDifference(read_model=read_model, table=table.bare, key=key, kind="changed",
                                           columns=columns, live=ours, rebuilt=theirs))
        found.sort(key=lambda d: repr(sorted(d.key.items(), key=lambda kv: kv[0])))
        return found


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
        self.event_log = EventLog(app)
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
        self._closed = False
        self._lock = threading.RLock()

    def _connection(self) -> psycopg.Connection[Any]:
        """One connection kept between batches (idle polls would otherwise connect twice a second).

        Raises RuntimeError once the engine is closed, so a pass still running in a
        worker thread ends instead of opening a connection nobody closes.
        """
        if self._closed:
            raise EngineClosed("the projection engine is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
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
        _search_path(cur, _homes(projector.tables))
        for table in projector.tables:
            table.create(cur)
        cur.execute(
            f"INSERT INTO {TRACKING} (name, version, position) VALUES (%s, %s, 0) "
            f"ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = 0, "
            f"updated_at = now(), {_CLEARED}",
            (projector.name, projector.version),
        )
        cur.execute(f"DELETE FROM {QUARANTINE} WHERE projector = %s", (projector.name,))
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
            section = self._read(min(positions.values()))
            if section is None:
                return 0, {}
            applied = {name: self._apply(conn, name, section, raise_errors) for name in chosen}
            return len(section.ids), applied

    def _read(self, after: int) -> _Section | None:
        notifications = self.event_log.read_raw(after, self.batch_size)
        if not notifications:
            return None
        events = decode_notifications(self.event_log, notifications)
        return _Section(after, [n.id for n in notifications], events, list(notifications))

    def _apply(self, conn: psycopg.Connection[Any], name: str, section: _Section, raise_errors: bool) -> int:
        projector = self.projectors[name]
        quarantined: list[tuple[str, int, UUID, int, str, str]] = []
        try:
            with conn.transaction(), conn.cursor() as cur:
                row = cur.execute(f"SELECT position FROM {TRACKING} WHERE name = %s FOR UPDATE", (name,)).fetchone()
                position = int(row[0]) if row else 0
                if position < section.after:
                    return 0
                first = bisect_right(section.ids, position)
                if first == len(section.ids):
                    return 0
                _search_path(cur, _homes(projector.tables))
                quarantined = apply_isolating(
                    cur, projector, section.events[first:], section.notifications[first:]
                )
                _record_quarantine(cur, quarantined)
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
        _log_quarantine(quarantined)
        if self._failures.pop(name, None):
            self._retry_at.pop(name, None)
            log.info("projector.recovered", projector=name)
        return len(section.ids) - first

    def _failed(self, conn: psycopg.Connection[Any], name: str, error: BaseException) -> None:
        """Record a failure in the projector's tracking row and schedule its retry.

        A fault (the database away or busy) is one warning line; anything else is a bug in the
        read model, logged with its traceback when it first fails and as one line after that."""
        attempts = self._failures[name] = self._failures.get(name, 0) + 1
        delay = min(self.retry_base * 2 ** (attempts - 1), self.retry_max)
        self._retry_at[name] = self._clock() + delay
        text = one_line(error)
        with conn.transaction():
            conn.execute(
                f"UPDATE {TRACKING} SET last_error = %s, failed_at = now(), "
                f"failing_since = coalesce(failing_since, now()), attempts = attempts + 1 WHERE name = %s",
                (text, name),
            )
        if expected_fault(error):
            log.warning("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, error=text)
        elif attempts == 1:
            log.error("projector.failed", projector=name, attempts=attempts, retry_in_s=delay, exc_info=error)
        else:
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

    def quarantined(self) -> list[str]:
        """The read models with quarantined events, in registration order."""
        with psycopg.connect(self.database_url) as conn:
            names = {row[0] for row in conn.execute(f"SELECT DISTINCT projector FROM {QUARANTINE}").fetchall()}
        return [name for name in self.projectors if name in names]

    def retry(
        self, names: Sequence[str] | None = None, progress: Callable[[ReplayProgress], None] | None = None
    ) -> tuple[list[QuarantinedEvent], list[QuarantinedEvent]]:
        """Apply the quarantined events of `names` (default: every read model that has some) again.

        Each such read model is replayed from zero (`rebuild_many`), so the events that now apply
        land in log order among the others; the ones that still fail stay quarantined. Returns
        the quarantined events before and after.
        """
        chosen = self.quarantined() if names is None else list(names)
        with psycopg.connect(self.database_url) as conn:
            before = quarantined_events(conn, chosen)
        if not chosen:
            return before, []
        self.rebuild_many(chosen, progress)
        with psycopg.connect(self.database_url) as conn:
            after = quarantined_events(conn, chosen)
        return before, after

    def rebuild(self, name: str, progress: Callable[[ReplayProgress], None] | None = None) -> int:
        """Replay one read model from the first event into fresh tables and swap them in; returns the events replayed."""
        return self.rebuild_many([name], progress)

    def rebuild_many(self, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None) -> int:
        """Replay read models from the first event into fresh tables, then swap them in atomically.

        The live tables keep answering queries, and the live engine keeps
        projecting into them, until the swap. The log is read and decoded once
        for all of `names`. Returns the events replayed. Raises `LookupError` for
        an unknown name, `ReplayBusy` if another rebuild or verify of one of them
        runs, and whatever a projector raises (the shadow tables are dropped and
        the live read model is left as it was).
        """
        chosen = self._chosen(names)
        with self._shadow(chosen, SHADOW_SCHEMA) as shadow:
            log.info("projector.rebuild.started", projectors=list(names))
            shadow.catch_up(progress)
            shadow.swap(progress)
        with self._lock:
            for projector in chosen:
                self._failures.pop(projector.name, None)
                self._retry_at.pop(projector.name, None)
        log.info("projector.rebuild.swapped", projectors=list(names), position=shadow.position, events=shadow.events)
        return shadow.events

    def verify(
        self, names: Sequence[str], progress: Callable[[ReplayProgress], None] | None = None
    ) -> list[RowDifference]:
        """Rebuild `names` beside the live tables and return every row in which they differ.

        The comparison is made at one position: with the read models' tracking
        rows locked, both the shadow and the live read models are brought to the
        log's head (the live ones as the engine would have), then compared by
        primary key. The shadow tables are dropped afterwards, whatever happens.
        Raises like `rebuild_many`, and the live projector's error if it cannot
        catch up.
        """
        chosen = self._chosen(names)
        with self._shadow(chosen, VERIFY_SCHEMA) as shadow:
            shadow.catch_up(progress)
            return shadow.compare(progress)

    def _chosen(self, names: Sequence[str]) -> list[Projector]:
        if unknown := [n for n in names if n not in self.projectors]:
            raise LookupError(f"unknown read model {', '.join(unknown)}; known: {', '.join(self.projectors)}")
        if not names:
            raise LookupError("no read model named")
        return [self.projectors[n] for n in dict.fromkeys(names)]

    @contextmanager
    def _shadow(self, projectors: Sequence[Projector], schema: str) -> Iterator[_Shadow]:
        """Fresh tables for `projectors` in `schema`, on a connection of their own; dropped if left behind."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            for projector in projectors:
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_REPLAY_LOCK, projector.name)
                ).fetchone()
                if not (row and row[0]):
                    raise ReplayBusy(f"a rebuild or verify of {projector.name} is already running")
            shadow = _Shadow(self.event_log, conn, projectors, schema, self.batch_size)
            shadow.create()
            try:
                yield shadow
            finally:
                if not conn.broken:
                    shadow.drop()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, poll_interval: float = 0.5, fault_backoff_max: float = 30.0) -> None:
        """Keep every read model current: woken by `wake()`, and polling as a fallback.

        A pass that fails because the database is away is one warning line when the outage
        starts, and is retried after a pause that doubles up to `fault_backoff_max`; any other
        failure is logged with its traceback."""
        await asyncio.to_thread(self.setup)
        failures = 0
        while True:
            self._wakeup.clear()
            wait = poll_interval
            try:
                applied = await asyncio.to_thread(self.catch_up_all)
                for name, count in applied.items():
                    if count:
                        log.debug("projector.applied", projector=name, events=count)
                if failures:
                    log.info("projector.pass_recovered", failed_passes=failures)
                failures = 0
            except Exception as error:
                # The database or the log failed, not one projector: the next pass retries.
                failures += 1
                wait = min(poll_interval * 2 ** min(failures - 1, 16), max(fault_backoff_max, poll_interval))
                if not expected_fault(error):
                    log.exception("projector.pass_failed", failed_passes=failures)
                elif failures == 1:
                    log.warning("projector.pass_failed", error=one_line(error, 300), retry_in_s=wait)
                else:
                    log.debug("projector.pass_failed", error=one_line(error, 300), failed_passes=failures)
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except TimeoutError:
                pass
