"""Checkpoints: a verified copy of a read model at a log position, so a rebuild replays only the events after it.

A checkpoint holds every table of one read model as PostgreSQL's COPY text of its rows in
key order, zlib-compressed in chunks (`wl_checkpoint.checkpoint_chunks`), and the events
the read model had quarantined, all read in one snapshot together with the read model's
tracking row: the rows are exactly those of the events up to that position. Its row in
`wl_checkpoint.checkpoints` records the read model's declared version, the position, the
hash chain's newest link at or before the position, and a SHA-256 digest over the
version, the position, the link, the tables' names and columns and every byte of the rows.

`load` streams a checkpoint into a rebuild's shadow tables and recomputes the digest from
the bytes it writes; `check` refuses (`CheckpointRefused`) a checkpoint made by another
version of the read model, one past the log's head, and one whose chain link the chain no
longer holds (the log under it was re-chained), and `verify_chain_after` checks the stored
events after the oldest checkpoint against the chain, so the events replayed on top of the
checkpoints are the ones chained. The digest is not keyed: it catches a copy that was
edited or damaged, not someone able to rewrite both the rows and the digest (`--verify`
compares a rebuild with the live tables whenever wanted).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg import sql

from adapters.history import iter_records
from projections.chain import CHAIN, GENESIS, LINK_SPAN, PREFIX, chain_link, link
from projections.errors import ProjectionError
from projections.quarantine import QuarantineRow
from projections.tables import Projector, Table
from projections.tracking import QUARANTINE, TRACKING

__all__ = [
    "CHECKPOINT_SCHEMA",
    "Checkpoint",
    "CheckpointError",
    "CheckpointRefused",
    "check",
    "ensure_schema",
    "export_newest",
    "import_exported",
    "list_checkpoints",
    "load",
    "newest",
    "prune",
    "verify_chain_after",
    "write",
]

CHECKPOINT_SCHEMA = "wl_checkpoint"
_CHECKPOINTS = f"{CHECKPOINT_SCHEMA}.checkpoints"
_CHUNKS = f"{CHECKPOINT_SCHEMA}.checkpoint_chunks"
_QUARANTINE_PART = "~quarantine"
CHUNK_BYTES = 1 << 20
"""Compressed bytes per stored chunk."""

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {CHECKPOINT_SCHEMA};
CREATE TABLE IF NOT EXISTS {_CHECKPOINTS} (
    id bigserial PRIMARY KEY,
    read_model text NOT NULL,
    version integer NOT NULL,
    position bigint NOT NULL,
    chain_position bigint,
    chain_hash text,
    digest text NOT NULL,
    rows bigint NOT NULL,
    raw_bytes bigint NOT NULL,
    stored_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS checkpoints_read_model ON {_CHECKPOINTS} (read_model, position DESC);
CREATE TABLE IF NOT EXISTS {_CHUNKS} (
    checkpoint bigint NOT NULL REFERENCES {_CHECKPOINTS} (id) ON DELETE CASCADE,
    part text NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (checkpoint, part, seq)
);
ALTER TABLE {_CHUNKS} ALTER COLUMN data SET STORAGE EXTERNAL;
"""

_COLUMNS = "id, read_model, version, position, chain_position, chain_hash, digest, rows, raw_bytes, stored_bytes, " \
    "created_at"  # fmt: skip


class CheckpointError(ProjectionError):
    """A checkpoint could not be written (the read model is not set up, or of another version)."""


class CheckpointRefused(ProjectionError):
    """A checkpoint failed verification: a rebuild will not start from it."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One stored checkpoint: which read model, of which version, at which position, and its size.

    `chain_position`/`chain_hash` are the hash chain's newest link at or before `position`
    (None when nothing was chained yet, or the installation keeps no chain). `raw_bytes` is
    the COPY text of its rows, `stored_bytes` what the compressed chunks take.
    """

    id: int
    read_model: str
    version: int
    position: int
    chain_position: int | None
    chain_hash: str | None
    digest: str
    rows: int
    raw_bytes: int
    stored_bytes: int
    created_at: datetime


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the checkpoint tables if missing (in the caller's transaction, or autocommit)."""
    conn.execute(_DDL)


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    return row is not None and row[0] is not None


def _header(read_model: str, version: int, position: int, chain: tuple[int, str] | None,
            tables: Sequence[Table[Any]]) -> bytes:  # fmt: skip
    return msgspec.json.encode({
        "read_model": read_model, "version": version, "position": position,
        "chain": list(chain) if chain else None, "tables": [[t.bare, *t.columns] for t in tables],
    })  # fmt: skip


def _part(name: str) -> bytes:
    return b"\x00" + name.encode() + b"\x00"


def _dump(table: Table[Any]) -> sql.Composed:
    columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    keys = sql.SQL(", ").join(sql.Identifier(k.strip()) for k in table.key.split(","))
    return sql.SQL("COPY (SELECT {} FROM {}.{} ORDER BY {}) TO STDOUT").format(
        columns, sql.Identifier(table.home), sql.Identifier(table.bare), keys
    )


class _ChunkWriter:
    """Compresses one part's bytes and inserts them as chunks on the writing connection."""

    def __init__(self, conn: psycopg.Connection[Any], checkpoint: int, part: str) -> None:
        self.conn, self.checkpoint, self.part = conn, checkpoint, part
        self.compressor = zlib.compressobj(6)
        self.pending: list[bytes] = []
        self.size = self.seq = self.stored = 0

    def write(self, data: bytes) -> None:
        out = self.compressor.compress(data)
        if out:
            self.pending.append(out)
            self.size += len(out)
            if self.size >= CHUNK_BYTES:
                self._flush()

    def _flush(self) -> None:
        data = b"".join(self.pending)
        self.pending, self.size = [], 0
        if data:
            self.conn.execute(f"INSERT INTO {_CHUNKS} (checkpoint, part, seq, data) VALUES (%s, %s, %s, %s)",
                              (self.checkpoint, self.part, self.seq, data))  # fmt: skip
            self.seq += 1
            self.stored += len(data)

    def close(self) -> int:
        self.pending.append(self.compressor.flush())
        self.size += len(self.pending[-1])
        self._flush()
        return self.stored


def write(database_url: str, projector: Projector) -> Checkpoint:
    """Store a checkpoint of the live read model at the position its tracking row holds.

    The tracking row, the tables and the quarantine are read in one repeatable-read snapshot
    (the engine commits rows and position together), so nothing is locked and the live
    projector goes on meanwhile. Raises `CheckpointError` for a read model not set up, or
    whose tables were built by another version than `projector` declares.
    """
    with psycopg.connect(database_url) as reader, psycopg.connect(database_url) as writer:
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.read_only = True
        with reader.transaction(), writer.transaction():
            ensure_schema(writer)
            row = reader.execute(f"SELECT position, version FROM {TRACKING} WHERE name = %s",
                                 (projector.name,)).fetchone()  # fmt: skip
            if row is None:
                raise CheckpointError(f"read model {projector.name} is not set up: nothing to checkpoint")
            position, version = int(row[0]), row[1]
            if version != projector.version:
                raise CheckpointError(
                    f"the tables of {projector.name} were built by version {version}, the read model is version "
                    f"{projector.version}: rebuild it before checkpointing"
                )
            chain = chain_link(reader, position) if _exists(reader, CHAIN.name) else None
            stub = writer.execute(
                f"INSERT INTO {_CHECKPOINTS} (read_model, version, position, chain_position, chain_hash, digest, rows, "
                f"raw_bytes, stored_bytes) VALUES (%s, %s, %s, %s, %s, '', 0, 0, 0) RETURNING id",
                (projector.name, version, position, chain[0] if chain else None, chain[1] if chain else None),
            ).fetchone()
            assert stub is not None
            ident = int(stub[0])
            digest = hashlib.sha256(_header(projector.name, version, position, chain, projector.tables))
            rows = raw = stored = 0
            for table in projector.tables:
                digest.update(_part(table.bare))
                chunks = _ChunkWriter(writer, ident, table.bare)
                with reader.cursor() as cur, cur.copy(_dump(table)) as copy:
                    for data in copy:
                        block = bytes(data)
                        digest.update(block)
                        chunks.write(block)
                        raw += len(block)
                        rows += block.count(b"\n")
                stored += chunks.close()
            quarantined = msgspec.json.encode(reader.execute(
                f"SELECT position, originator_id::text, originator_version, topic, error FROM {QUARANTINE} "
                f"WHERE projector = %s ORDER BY position", (projector.name,),
            ).fetchall())  # fmt: skip
            digest.update(_part(_QUARANTINE_PART))
            digest.update(quarantined)
            chunks = _ChunkWriter(writer, ident, _QUARANTINE_PART)
            chunks.write(quarantined)
            stored += chunks.close()
            done = writer.execute(
                f"UPDATE {_CHECKPOINTS} SET digest = %s, rows = %s, raw_bytes = %s, stored_bytes = %s "
                f"WHERE id = %s RETURNING {_COLUMNS}",
                (digest.hexdigest(), rows, raw + len(quarantined), stored, ident),
            ).fetchone()
            assert done is not None
            return _checkpoint(done)


def _checkpoint(record: Sequence[Any]) -> Checkpoint:
    return Checkpoint(**dict(zip([c.strip() for c in _COLUMNS.split(",")], record, strict=True)))


def list_checkpoints(conn: psycopg.Connection[Any], names: Sequence[str] | None = None) -> list[Checkpoint]:
    """The stored checkpoints (of `names`, or all), by read model, newest first."""
    if not _exists(conn, _CHECKPOINTS):
        return []
    where, params = ("", ()) if names is None else (" WHERE read_model = ANY(%s)", (list(names),))
    records = conn.execute(f"SELECT {_COLUMNS} FROM {_CHECKPOINTS}{where} ORDER BY read_model, position DESC, id DESC",
                           params).fetchall()  # fmt: skip
    return [_checkpoint(r) for r in records]


def newest(conn: psycopg.Connection[Any], name: str) -> Checkpoint | None:
    """The newest checkpoint of read model `name` (at the highest position), whatever its version."""
    found = list_checkpoints(conn, [name])
    return found[0] if found else None


def prune(conn: psycopg.Connection[Any], keep: int) -> list[Checkpoint]:
    """Delete all but the newest `keep` checkpoints of each read model; returns those deleted."""
    if keep < 0:
        raise ValueError(f"keep must be 0 or more, got {keep}")
    if not _exists(conn, _CHECKPOINTS):
        return []
    records = conn.execute(
        f"DELETE FROM {_CHECKPOINTS} WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY "
        f"read_model ORDER BY position DESC, id DESC) AS n FROM {_CHECKPOINTS}) ranked WHERE n > %s) "
        f"RETURNING {_COLUMNS}",
        (keep,),
    ).fetchall()
    return sorted(map(_checkpoint, records), key=lambda c: (c.read_model, -c.position))


def check(conn: psycopg.Connection[Any], checkpoint: Checkpoint, projector: Projector, head: int) -> None:
    """Refuse a checkpoint of another version, past the log's `head`, or whose chain link the chain lost.

    The digest is checked by `load`, as the rows are read."""
    name = f"checkpoint {checkpoint.id} of {checkpoint.read_model}"
    if checkpoint.version != projector.version:
        raise CheckpointRefused(
            f"{name} was made by version {checkpoint.version} of the read model, which is now version "
            f"{projector.version}"
        )
    if checkpoint.position > head:
        raise CheckpointRefused(f"{name} is at position {checkpoint.position:,}, past the log's head {head:,}")
    if checkpoint.chain_position is not None and _exists(conn, CHAIN.name):
        found = chain_link(conn, checkpoint.chain_position)
        if found != (checkpoint.chain_position, checkpoint.chain_hash):
            raise CheckpointRefused(
                f"{name}: the hash chain no longer holds the link it was made at (position "
                f"{checkpoint.chain_position:,}): the history under it was re-chained"
            )


def _parts(conn: psycopg.Connection[Any], checkpoint: int, part: str) -> Iterator[bytes]:
    """A part's bytes, decompressed, streamed chunk by chunk from its own connection."""
    decompressor = zlib.decompressobj()
    with conn.cursor(name="wl_checkpoint_chunks") as cur:
        cur.itersize = 4
        cur.execute(f"SELECT data FROM {_CHUNKS} WHERE checkpoint = %s AND part = %s ORDER BY seq",
                    (checkpoint, part))  # fmt: skip
        try:
            for (data,) in cur:
                yield decompressor.decompress(bytes(data))
            yield decompressor.flush()
        except zlib.error as error:
            raise CheckpointRefused(f"checkpoint {checkpoint}: its {part} chunks do not decompress ({error})") from None
        if not decompressor.eof:
            raise CheckpointRefused(f"checkpoint {checkpoint}: its {part} chunks end before their data does")


def load(
    cur: psycopg.Cursor[Any], database_url: str, checkpoint: Checkpoint, projector: Projector
) -> list[QuarantineRow]:
    """Fill `projector`'s tables, where they currently live (a shadow schema under `building`), from `checkpoint`.

    In the caller's transaction: each table is created, filled by COPY and given its
    indexes. The digest is recomputed from the bytes as they are written; a mismatch, or rows
    the table refuses (not of its types, a key twice), raises `CheckpointRefused`, which rolls the caller's transaction back. Returns the
    quarantined events the checkpoint carries.
    """
    at, chain_hash = checkpoint.chain_position, checkpoint.chain_hash
    chain = (at, chain_hash) if at is not None and chain_hash is not None else None
    digest = hashlib.sha256(_header(checkpoint.read_model, checkpoint.version, checkpoint.position, chain,
                                    projector.tables))  # fmt: skip
    with psycopg.connect(database_url) as reader, reader.transaction():
        for table in projector.tables:
            digest.update(_part(table.bare))
            cur.execute(f"DROP TABLE IF EXISTS {table.name} CASCADE")
            cur.execute(table.ddl)
            columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
            try:
                with cur.copy(sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
                    sql.Identifier(table.schema), sql.Identifier(table.bare), columns
                )) as copy:  # fmt: skip
                    for data in _parts(reader, checkpoint.id, table.bare):
                        digest.update(data)
                        if data:
                            copy.write(data)
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                raise CheckpointRefused(
                    f"checkpoint {checkpoint.id} of {checkpoint.read_model}: its {table.bare} rows do not load "
                    f"(edited or damaged: {error.diag.message_primary or type(error).__name__})"
                ) from None
            for index in table.indexes:
                cur.execute(index)
        quarantined = b"".join(_parts(reader, checkpoint.id, _QUARANTINE_PART))
    digest.update(_part(_QUARANTINE_PART))
    digest.update(quarantined)
    if digest.hexdigest() != checkpoint.digest:
        raise CheckpointRefused(
            f"checkpoint {checkpoint.id} of {checkpoint.read_model}: its rows no longer match its digest "
            f"(edited or damaged)"
        )
    rows = msgspec.json.decode(quarantined, type=list[tuple[int, UUID, int, str, str]])
    return [(checkpoint.read_model, p, o, v, t, e) for p, o, v, t, e in rows]


def verify_chain_after(database_url: str, position: int, chain_hash: str | None) -> int:
    """Check every stored event after `position` against the hash chain, from the chain's hash there.

    `chain_hash` is the chain's hash at `position` (None for the start of the log). Events
    stored after the chain's head are not judged. Raises `CheckpointRefused` naming the
    first position where the store and the chain part; returns the events checked.
    """
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            if not _exists(conn, CHAIN.name):
                return 0
            previous = bytes.fromhex(chain_hash) if chain_hash else GENESIS
            links = _links_after(conn, position)
            current = next(links, None)
            checked = 0
            for record in iter_records(conn, after=position):
                if current is None:
                    break
                if current[0] != record.notification_id:
                    at = min(current[0], record.notification_id)
                    raise CheckpointRefused(
                        f"the stored history no longer matches its hash chain at position {at:,} (an event "
                        f"{'deleted' if current[0] < record.notification_id else 'inserted'}): nothing rebuilt"
                    )
                previous = link(previous, record)
                if previous[:PREFIX].hex() != current[1] or current[2] not in (None, previous.hex()):
                    raise CheckpointRefused(
                        f"the stored history no longer matches its hash chain at position {record.notification_id:,} "
                        f"(the event {record.originator_id} v{record.version} changed): nothing rebuilt"
                    )
                checked += 1
                current = next(links, None)
            if current is not None:
                raise CheckpointRefused(
                    f"the stored history no longer matches its hash chain at position {current[0]:,} (an event "
                    f"deleted): nothing rebuilt"
                )
            return checked


def _links_after(conn: psycopg.Connection[Any], position: int) -> Iterator[tuple[int, str, str | None]]:
    """Every chained event after `position` as (position, hash prefix, full hash if it ends its link), in order."""
    with conn.cursor(name="wl_checkpoint_links") as cur:
        cur.itersize = 64
        cur.execute(f"{CHAIN.select} WHERE link >= %s ORDER BY link", (position // LINK_SPAN,))
        for record in cur:
            row = CHAIN.decode(record)
            for at, prefix in row.entries():
                if at > position:
                    yield at, prefix, row.hash if at == row.position else None


_RECORDS = msgspec.msgpack.Decoder(list[tuple[Any, ...]])


def export_newest(database_url: str, up_to: int, names: Sequence[str]) -> Iterator[bytes]:
    """The newest checkpoint of each read model in `names` at or before log position `up_to`, as they are
    stored, for a backup to carry: MessagePack lists of records, each a checkpoint's row
    (`["checkpoint", id, read_model, version, position, chain_position, chain_hash, digest, rows,
    raw_bytes, stored_bytes, created_at]`) followed by its chunks (`["chunk", id, part, seq, data]`),
    about `CHUNK_BYTES` at a time. Read in one snapshot; yields nothing where none is stored."""
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            if not _exists(conn, _CHECKPOINTS):
                return
            chosen = conn.execute(
                f"SELECT DISTINCT ON (read_model) {_COLUMNS} FROM {_CHECKPOINTS} WHERE position <= %s "
                f"AND read_model = ANY(%s) ORDER BY read_model, position DESC, id DESC",
                (up_to, list(names)),
            ).fetchall()
            for record in chosen:
                found = _checkpoint(record)
                batch: list[tuple[Any, ...]] = [("checkpoint", *record[:-1], found.created_at.isoformat())]
                size = 0
                with conn.cursor(name="wl_checkpoint_export") as cur:
                    cur.itersize = 4
                    cur.execute(f"SELECT part, seq, data FROM {_CHUNKS} WHERE checkpoint = %s ORDER BY part, seq",
                                (found.id,))  # fmt: skip
                    for part, seq, data in cur:
                        batch.append(("chunk", found.id, part, seq, bytes(data)))
                        size += len(data)
                        if size >= CHUNK_BYTES:
                            yield msgspec.msgpack.encode(batch)
                            batch, size = [], 0
                if batch:
                    yield msgspec.msgpack.encode(batch)


def import_exported(database_url: str, messages: Iterable[bytes]) -> list[Checkpoint]:
    """Store checkpoints that `export_newest` gave (from a backup) under new ids, in one transaction;
    returns them. They are trusted no more than any other: a rebuild checks each before using it
    (`check`, the chain after it, its digest as it loads). Raises `CheckpointError` for records
    that do not read as checkpoints (nothing stored)."""
    stored: dict[int, int] = {}
    with psycopg.connect(database_url) as conn, conn.transaction():
        ensure_schema(conn)
        for message in messages:
            try:
                records = _RECORDS.decode(message)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise CheckpointError("the checkpoints carried cannot be read") from None
            for record in records:
                try:
                    if record[0] == "checkpoint":
                        _, old, *fields = record
                        row = conn.execute(
                            f"INSERT INTO {_CHECKPOINTS} ({_COLUMNS.split(', ', 1)[1]}) VALUES "
                            f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                            (*fields[:-1], datetime.fromisoformat(fields[-1])),
                        ).fetchone()
                        assert row is not None
                        stored[int(old)] = int(row[0])
                    elif record[0] == "chunk" and record[1] in stored:
                        _, old, part, seq, data = record
                        conn.execute(f"INSERT INTO {_CHUNKS} (checkpoint, part, seq, data) VALUES (%s, %s, %s, %s)",
                                     (stored[old], part, seq, data))  # fmt: skip
                    else:
                        raise CheckpointError(f"the checkpoints carried hold an unknown record {record[:2]!r}")
                except (ValueError, TypeError, psycopg.DataError) as exc:
                    raise CheckpointError(f"the checkpoints carried do not read as checkpoints: {exc}") from None
        found = conn.execute(f"SELECT {_COLUMNS} FROM {_CHECKPOINTS} WHERE id = ANY(%s) ORDER BY read_model",
                             (list(stored.values()),)).fetchall()  # fmt: skip
    return [_checkpoint(r) for r in found]
