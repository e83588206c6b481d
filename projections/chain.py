"""The hash chain over the stored events: tamper evidence for the whole log.

Every stored event gets a SHA-256 hash chained over its predecessor's, in notification
order: `hash(n) = sha256(hash(previous) || record(n))`, starting from 32 zero bytes.
`record(n)` is a canonical encoding of the row exactly as PostgreSQL stores it: the
notification id and version as 8-byte big-endian integers, the originator id's 16
bytes, then the topic and the stored state bytes, each preceded by its length. So a
change of any byte of an event's payload, topic or identity changes its hash and every
hash after it.

The chain is a read model (`wl_read.audit_chain`, one row per position) kept by
`ChainProjector`. `verify` walks the store and the chain side by side, recomputing
every hash from the stored bytes, and names the first position where they part:
`changed` (the stored event's bytes no longer give its recorded hash), `deleted` (the
chain recorded a position the store no longer has) or `inserted` (the store has a
position the chain skipped). Events stored after the chain's head are not yet chained
and are counted, not judged.

Rebuilding this read model re-chains whatever the store holds now, which would bless
an edit: verify first, and keep copies of the head (every compliance export's manifest
carries it) to compare with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
import psycopg

from adapters.history import StoredRecord, iter_records, records_for_events
from projections.tables import READ_SCHEMA, Table

GENESIS: Final = bytes(32)
ALGORITHM: Final = (
    "sha256(previous || notification_id:u64 || version:i64 || originator_id:16 || len:u32 topic || len:u64 state)"
)


def encode_record(record: StoredRecord) -> bytes:
    """The canonical bytes of one stored record, as the chain hashes them."""
    topic = record.topic.encode()
    return b"".join(
        (
            record.notification_id.to_bytes(8, "big"),
            record.version.to_bytes(8, "big", signed=True),
            record.originator_id.bytes,
            len(topic).to_bytes(4, "big"),
            topic,
            len(record.state).to_bytes(8, "big"),
            record.state,
        )
    )


def link(previous: bytes, record: StoredRecord) -> bytes:
    """The chain hash of `record` after the hash `previous`."""
    return hashlib.sha256(previous + encode_record(record)).digest()


class ChainRow(msgspec.Struct, kw_only=True):
    """One link of `wl_read.audit_chain`: the position, what it held, and its chain hash (hex)."""

    position: int
    originator_id: UUID
    version: int
    hash: str


CHAIN = Table(f"{READ_SCHEMA}.audit_chain", ChainRow, key="position")


class ChainProjector:
    """Extends the hash chain with each batch, hashing the stored bytes of the batch's events."""

    name = "chain"
    version = 1
    tables = (CHAIN,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        records = records_for_events(cur, events)
        head = cur.execute(f"SELECT position, hash FROM {CHAIN.name} ORDER BY position DESC LIMIT 1").fetchone()
        position, previous = (int(head[0]), bytes.fromhex(head[1])) if head else (0, GENESIS)
        rows: list[tuple[Any, ...]] = []
        for record in records:
            if record.notification_id <= position:
                continue
            previous = link(previous, record)
            position = record.notification_id
            rows.append(
                CHAIN.values(
                    ChainRow(position=position, originator_id=record.originator_id, version=record.version,
                             hash=previous.hex())
                )
            )  # fmt: skip
        if rows:
            cur.executemany(CHAIN.upsert, rows)


class ChainHead(msgspec.Struct, frozen=True, kw_only=True):
    """The newest link: its position and hash. `algorithm` says how the hashes are made."""

    position: int
    hash: str
    algorithm: str = ALGORITHM


async def chain_head(conn: psycopg.AsyncConnection[Any], at: int | None = None) -> ChainHead | None:
    """The chain's newest link, or the newest at or before position `at`; None while the chain is empty."""
    if at is None:
        cur = await conn.execute(f"SELECT position, hash FROM {CHAIN.name} ORDER BY position DESC LIMIT 1")
    else:
        cur = await conn.execute(
            f"SELECT position, hash FROM {CHAIN.name} WHERE position <= %s ORDER BY position DESC LIMIT 1", (at,)
        )
    row = await cur.fetchone()
    return ChainHead(position=int(row[0]), hash=row[1]) if row else None


def chain_head_sync(conn: psycopg.Connection[Any], at: int | None = None) -> ChainHead | None:
    """`chain_head` over a synchronous connection (the CLI, export jobs in a worker thread)."""
    query = f"SELECT position, hash FROM {CHAIN.name}"
    params: tuple[Any, ...] = ()
    if at is not None:
        query += " WHERE position <= %s"
        params = (at,)
    row = conn.execute(query + " ORDER BY position DESC LIMIT 1", params).fetchone()
    return ChainHead(position=int(row[0]), hash=row[1]) if row else None


Finding = Literal["changed", "deleted", "inserted"]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The first position where the store and the chain part, and how."""

    position: int
    kind: Finding
    detail: str


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    """What `verify` found: `problem` is None when every chained event still matches."""

    checked: int
    head: ChainHead | None
    unchained: int
    problem: Problem | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def _links(conn: psycopg.Connection[Any], batch: int) -> Iterator[tuple[int, str]]:
    with conn.cursor(name="wl_chain_links") as cur:
        cur.itersize = batch
        cur.execute(f"SELECT position, hash FROM {CHAIN.name} ORDER BY position")
        for position, digest in cur:
            yield int(position), str(digest)


def verify(
    conn: psycopg.Connection[Any], *, progress: Callable[[int], None] | None = None, batch: int = 5000
) -> Verification:
    """Walk the stored events and the chain in notification order and recompute every hash.

    Stops at the first problem (every hash after a changed one differs as well). Runs in
    one read-only, repeatable-read transaction on `conn` (not in autocommit mode), so
    writers carrying on meanwhile do not disturb it; `progress` gets the count of
    records read, every `batch` records.
    """
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.transaction():
        head_row = conn.execute(f"SELECT position, hash FROM {CHAIN.name} ORDER BY position DESC LIMIT 1").fetchone()
        head = ChainHead(position=int(head_row[0]), hash=head_row[1]) if head_row else None
        links = _links(conn, batch)
        current = next(links, None)
        previous, checked, unchained, read = GENESIS, 0, 0, 0

        def found(position: int, kind: Finding, detail: str) -> Verification:
            return Verification(checked=checked, head=head, unchained=unchained,
                                problem=Problem(position=position, kind=kind, detail=detail))  # fmt: skip

        for record in iter_records(conn, batch=batch):
            read += 1
            if progress is not None and read % batch == 0:
                progress(read)
            if current is None:
                unchained += 1
                continue
            if current[0] < record.notification_id:
                return found(current[0], "deleted", "the chain recorded an event here that the store no longer holds")
            if current[0] > record.notification_id:
                return found(record.notification_id, "inserted", "the store holds an event here that was never chained")
            previous = link(previous, record)
            if previous.hex() != current[1]:
                return found(
                    record.notification_id, "changed",
                    f"the stored event {record.originator_id} v{record.version} no longer matches its chain hash",
                )  # fmt: skip
            checked += 1
            current = next(links, None)
        if progress is not None:
            progress(read)
        if current is not None:
            return found(current[0], "deleted", "the chain recorded an event here that the store no longer holds")
        return Verification(checked=checked, head=head, unchained=unchained)


def chain_link(conn: psycopg.Connection[Any], at: int | None) -> tuple[int, str] | None:
    """The newest link (at or before `at`) as `(position, hash)`, the form export manifests take."""
    head = chain_head_sync(conn, at)
    return (head.position, head.hash) if head else None
