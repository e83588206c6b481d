"""How a read model is declared: its tables, and the `Projector` protocol the engine drives.

A `Table` is declared by its row Struct alone: columns, SQL types, DDL, select and
upsert all come from the Struct's fields. While a rebuild or verify builds fresh
tables in a shadow schema, `building` points the tables being built at that schema
in the building context only, so readers keep naming the live tables. Read models
name their tables only through `Table`, never as literal SQL names.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import msgspec
import msgspec.inspect as mi
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

__all__ = ["READ_SCHEMA", "Projector", "Table", "building", "home_schemas", "set_search_path"]

READ_SCHEMA = "wl_read"
"""The home schema of the read models' tables."""

R = TypeVar("R", bound=msgspec.Struct)

COPY_FROM = 64
"""Rows from which `Table.write` copies them into a temporary table and upserts them in one statement."""

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
    """Where the tables of the read models being built live while `building` is in effect, and the rows a
    replay keeps in memory for them (by table id, then key; None: none kept)."""

    schema: str
    tables: frozenset[int]
    kept: dict[int, dict[Any, Any]] | None


_TARGET: ContextVar[_Target | None] = ContextVar("wattledger_projection_target", default=None)


@contextmanager
def building(
    schema: str, tables: Collection[Table[Any]], kept: dict[int, dict[Any, Any]] | None = None
) -> Iterator[None]:
    """While inside, `tables` name themselves in `schema` (a rebuild's shadow schema), in this context only.

    Every other table, and every other thread or task, keeps naming the live tables,
    so readers are never pointed at a half-built read model.

    `kept`, given by a replay that alone writes `tables` in `schema` for as long as it lasts,
    holds the rows `Table.keep` was given between sections, so `Table.take` need not read and
    decode them again (see `Table.take`).
    """
    token = _TARGET.set(_Target(schema, frozenset(id(t) for t in tables), kept))
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
        self._copy_types = tuple(types[c].removesuffix(" NOT NULL") for c in self.columns)
        self._binary_staging = True
        constraints = [f"PRIMARY KEY ({key})"] + [f"UNIQUE ({column})" for column in unique]
        self._body = " (\n    " + ",\n    ".join([f"{c} {types[c]}" for c in self.columns] + constraints) + "\n)"
        self._indexes = tuple(indexes)
        self._home_name = re.compile(rf"(?<![\w.\"]){re.escape(self.home)}\.{re.escape(bare)}(?![\w\"])")
        self._conflict = f" ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(
            f"{c} = EXCLUDED.{c}" for c in self.columns if c != key
        )
        self._upsert_tail = f" ({', '.join(self.columns)}) VALUES ({', '.join('%s' for _ in self.columns)})" + (
            self._conflict
        )
        self._key_at = tuple(self.columns.index(c.strip()) for c in key.split(","))
        self._json_at = tuple(i for i, c in enumerate(self.columns) if c in self._json)

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

    def write(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert rows given as `values` tuples, as `cur.executemany(self.upsert, rows)` would.

        From COPY_FROM rows on, when their keys are distinct, the rows are copied into a
        temporary table and upserted by one statement: the server then parses, plans and
        checks one statement instead of one a row."""
        if len(rows) < COPY_FROM or len({tuple(row[i] for i in self._key_at) for row in rows}) < len(rows):
            if rows:
                cur.executemany(self.upsert, rows)
            return
        staging = f"pg_temp.wl_staging_{self.bare}"
        columns = ", ".join(self.columns)
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {self.name}) ON COMMIT DROP")
        self._stage(cur, staging, rows)
        cur.execute(f"INSERT INTO {self.name} ({columns}) SELECT {columns} FROM {staging}{self._conflict}")
        cur.execute(f"TRUNCATE {staging}")

    def _stage(self, cur: psycopg.Cursor[Any], staging: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Copy `write`'s rows into its staging table: by binary COPY (half the client's work for a wide row
        with json columns) under a savepoint, and by text COPY if that fails. A value not of its column's
        declared type fails the binary COPY (nothing is converted), and the text COPY stores it as before;
        this table then copies by text from then on. An error the text COPY raises too is raised."""
        columns = ", ".join(self.columns)
        if self._binary_staging:
            try:
                with cur.connection.transaction(), cur.copy(
                    f"COPY {staging} ({columns}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(self._copy_types)
                    for row in rows:
                        copy.write_row(row)
                return
            except Exception:
                if cur.connection.broken:
                    raise
                self._binary_staging = False
        with cur.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def copy_in(self, cur: psycopg.Cursor[Any], rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert rows (tuples in column order, json columns wrapped as `values` wraps them) with a binary COPY.

        Numbers and times travel as the server stores them, so neither side spells or parses them as text
        (for a float, the larger part of a text COPY's cost on both sides); the stored values are the same.
        Each value must be of its column's declared type (a UUID, an aware datetime, text as str): unlike a
        text COPY, nothing is converted, and a value of another type raises (`TypeError`, `AttributeError`)
        and the COPY stores nothing. `write`, whose rows come from every read model (some built in code that
        may hold a UUID's text), falls back to a text COPY for that reason (see `_stage`)."""
        with cur.copy(f"COPY {self.name} ({', '.join(self.columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(self._copy_types)
            for row in rows:
                copy.write_row(row)

    def values(self, row: R) -> tuple[Any, ...]:
        """The parameters of `upsert` for one row."""
        values = msgspec.structs.astuple(row)
        if not self._json_at:
            return values
        wrapped = list(values)
        for at in self._json_at:
            wrapped[at] = _json(wrapped[at])
        return tuple(wrapped)

    def decode(self, record: Sequence[Any]) -> R:
        """A row Struct from a record selected with `select`."""
        return msgspec.convert(dict(zip(self.columns, record, strict=True)), self.row)

    def load(self, cur: psycopg.Cursor[Any], keys: Collection[Any]) -> dict[Any, R]:
        """The rows whose key (of one column) is among `keys`, by key: what a projector folds a batch into."""
        if not keys:
            return {}
        cur.execute(f"{self.select} WHERE {self.key} = ANY(%s)", (list(keys),))
        return {getattr(row, self.key): row for row in map(self.decode, cur.fetchall())}

    def _kept(self) -> dict[Any, R] | None:
        target = _TARGET.get()
        if target is None or target.kept is None or id(self) not in target.tables:
            return None
        return target.kept.setdefault(id(self), {})

    def kept_by_replay(self) -> dict[Any, Any] | None:
        """What a replay that keeps rows (see `building`) holds in memory for this table, for a projector that
        keeps something other than whole rows (by keys of its own); None outside such a replay. The projector
        takes out what a batch changes and puts it back once the batch is written, as `take` and `keep` do, so
        a batch that fails leaves nothing stale behind. Not for a table whose rows `take` and `keep` handle."""
        return self._kept()

    def take(self, cur: psycopg.Cursor[Any], keys: Collection[Any]) -> dict[Any, R]:
        """As `load`, but a replay that kept rows (`keep`) hands those over instead of reading them again.

        The rows handed over are no longer kept: the caller changes them in place, and gives back
        with `keep` the ones it has written. A batch that fails before that (its savepoint rolled
        back) leaves them out, and the next reads them from the table. Outside a replay that keeps
        rows this is `load`."""
        kept = self._kept()
        if kept is None or not kept:
            return self.load(cur, keys)
        rows: dict[Any, R] = {}
        missing = []
        for key in keys:
            row = kept.pop(key, None)
            if row is None:
                missing.append(key)
            else:
                rows[key] = row
        if missing:
            rows.update(self.load(cur, missing))
        return rows

    def keep(self, rows: Iterable[R]) -> None:
        """Rows just written as they are in the table, kept for the next `take` while a replay keeps rows."""
        kept = self._kept()
        if kept is not None:
            for row in rows:
                kept[getattr(row, self.key)] = row


class Projector(Protocol):
    """A read model: its versioned tables and how a batch of events changes them.

    A read model may also declare `ignores`: the event types its `apply_batch` does nothing
    with (or `projections.quarantine.EVERY_EVENT`). Such events are not handed to it (nor
    quarantined for it when they cannot be decoded), and an event every read model of a pass
    ignores is not decoded at all. A read model declaring `EVERY_EVENT` takes every event, as
    a `projections.quarantine.Unread` where no other read model of the pass needed it decoded.
    """

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


def home_schemas(tables: Sequence[Table[Any]]) -> list[str]:
    """The home schemas of `tables`, each once, in order."""
    return list(dict.fromkeys(t.home for t in tables))


def set_search_path(cur: psycopg.Cursor[Any], schemas: Sequence[str]) -> None:
    """Point unqualified names at `schemas` for the rest of the caller's transaction."""
    path = sql.SQL(", ").join([*map(sql.Identifier, schemas), sql.Identifier("public")])
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
