"""The hash chain over the stored events: tamper evidence for the whole log.

Every stored event gets a SHA-256 hash chained over its predecessor's, in notification
order: `hash(n) = sha256(hash(previous) || record(n))`, starting from 32 zero bytes.
`record(n)` is a canonical encoding of the row exactly as PostgreSQL stores it: the
notification id and version as 8-byte big-endian integers, the originator id's 16
bytes, then the topic and the stored state bytes, each preceded by its length. So a
change of any byte of an event's payload, topic or identity changes its hash and every
hash after it.

The chain is a read model (`wl_read.audit_chain`) kept by `ChainProjector`, one row (a
link) per span of LINK_SPAN positions rather than one per event: a link keeps the full
hash of its newest event, which of its positions hold chained events, and the first
PREFIX bytes of each of their hashes, about 16 bytes an event instead of a row. The full
hash at the end of each link is what makes the chain tamper-evident (every hash before it
feeds it); the prefixes name the single event that no longer matches. The head at any
position inside a link is recomputed from the link before (`chain_head`).

`verify` walks the store and the chain side by side, recomputing
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
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Literal, cast
from uuid import UUID

import msgspec
import psycopg
from eventsourcing.persistence import Notification

from adapters.history import EVENTS_TABLE, StoredRecord, iter_records, records_for_events
from projections.quarantine import EVERY_EVENT, notifications_of
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


LINK_SPAN: Final = 128
"""Positions a link covers: link k holds the events at positions k*LINK_SPAN+1 to (k+1)*LINK_SPAN."""
PREFIX: Final = 8
"""Bytes of each event's chain hash a link keeps, to name an event that no longer matches."""


class ChainRow(msgspec.Struct, kw_only=True):
    """One link of `wl_read.audit_chain`: the chained events of one span of positions.

    `position` is the newest chained event of the span and `hash` its full chain hash (hex);
    `present` marks which positions of the span hold a chained event (bit i: position
    link*LINK_SPAN+1+i, as hex), and `prefixes` is the first PREFIX bytes of each of their
    chain hashes, in order (hex). The spans are fixed, so the chain's rows depend only on the
    events chained, never on how they were batched.
    """

    link: int
    position: int
    hash: str
    present: str
    prefixes: str

    def positions(self) -> list[int]:
        mask, base = int(self.present, 16), self.link * LINK_SPAN + 1
        return [base + i for i in range(LINK_SPAN) if mask >> i & 1]

    def entries(self) -> list[tuple[int, str]]:
        """(position, hash prefix in hex) of every chained event of the link, in order."""
        width = 2 * PREFIX
        return [(p, self.prefixes[i * width : (i + 1) * width]) for i, p in enumerate(self.positions())]


CHAIN = Table(f"{READ_SCHEMA}.audit_chain", ChainRow, key="link")


def _span(position: int) -> int:
    return (position - 1) // LINK_SPAN


class ChainProjector:
    """Extends the hash chain with each batch, hashing the stored bytes of the batch's events.

    The engine's section already holds those bytes, as read from the store (`notifications_of`);
    only a batch applied outside the engine reads them again."""

    name = "chain"
    version = 2
    tables = (CHAIN,)
    ignores = EVERY_EVENT

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        held = notifications_of(events)
        if held is None:
            held = [r.notification() for r in records_for_events(cur, events)]
        cur.execute(f"{CHAIN.select} ORDER BY link DESC LIMIT 1")
        newest = cur.fetchone()
        touched = chained(CHAIN.decode(newest) if newest else None, held)
        if touched:
            CHAIN.write(cur, [CHAIN.values(r) for r in touched])


_POSITIONS = struct.Struct(">Qq")


def _framed(topic: str) -> bytes:
    encoded = topic.encode()
    return len(encoded).to_bytes(4, "big") + encoded


def chained(newest: ChainRow | None, notifications: Iterable[Notification]) -> list[ChainRow]:
    """The links that chaining `notifications` (in log order) after the chain's newest link `newest`
    writes: that link extended, and the links after it.

    Notifications at or before the chain's head are skipped. Each hash is `link`'s, with the
    record's encoding (`encode_record`) built here in one join, each topic framed once; the hash
    prefixes of a link are gathered as bytes and spelled in hex once."""
    position, previous = (newest.position, bytes.fromhex(newest.hash)) if newest else (0, GENESIS)
    touched: list[ChainRow] = []
    span, mask, prefixes, end, head = -1, 0, bytearray(), 0, GENESIS
    topics: dict[str, bytes] = {}
    pack, sha256, join = _POSITIONS.pack, hashlib.sha256, b"".join
    for notification in notifications:
        notification_id, version, topic, state = (notification.id, notification.originator_version,
                                                  notification.topic, notification.state)  # fmt: skip
        if notification_id <= position:
            continue
        framed = topics.get(topic)
        if framed is None:
            framed = topics[topic] = _framed(topic)
        try:
            positions = pack(notification_id, version)
        except struct.error:  # out of range: encode_record's own error
            positions = notification_id.to_bytes(8, "big") + version.to_bytes(8, "big", signed=True)
        originator_id = cast(UUID, notification.originator_id)
        previous = sha256(join((previous, positions, originator_id.bytes, framed, len(state).to_bytes(8, "big"),
                                state))).digest()  # fmt: skip
        position = notification_id
        if (position - 1) // LINK_SPAN != span:
            if end:
                touched.append(_link_row(span, end, head, mask, prefixes))
            span = _span(position)
            if newest is not None and newest.link == span:
                mask, prefixes = int(newest.present, 16), bytearray.fromhex(newest.prefixes)
            else:
                mask, prefixes = 0, bytearray()
        mask |= 1 << (position - 1 - span * LINK_SPAN)
        prefixes += previous[:PREFIX]
        end, head = position, previous
    if end:
        touched.append(_link_row(span, end, head, mask, prefixes))
    return touched


def _link_row(span: int, end: int, head: bytes, mask: int, prefixes: bytearray) -> ChainRow:
    return ChainRow(link=span, position=end, hash=head.hex(), present=format(mask, "x"), prefixes=prefixes.hex())


class ChainHead(msgspec.Struct, frozen=True, kw_only=True):
    """The newest link: its position and hash. `algorithm` says how the hashes are made."""

    position: int
    hash: str
    algorithm: str = ALGORITHM


_NEAR = f"{CHAIN.select} WHERE link <= %s ORDER BY link DESC LIMIT 2"
_NEWEST = f"{CHAIN.select} ORDER BY link DESC LIMIT 1"
_BETWEEN = (f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
            f"WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id")  # fmt: skip


def _head(row: ChainRow | None) -> ChainHead | None:
    return ChainHead(position=row.position, hash=row.hash) if row else None


def _inside(rows: Sequence[ChainRow], at: int) -> tuple[ChainRow, ChainRow | None] | None:
    """(the link whose span holds `at` but which goes past it, the link before) when the head at `at`
    must be recomputed from the stored events; None when a link's own head answers."""
    if rows and rows[0].link == _span(at) and rows[0].position > at:
        return rows[0], rows[1] if len(rows) > 1 else None
    return None


def _head_at(rows: Sequence[ChainRow], at: int, records: Sequence[StoredRecord]) -> ChainHead | None:
    """The chain's head at the newest chained position up to `at`.

    Inside a link the hash is recomputed from the link before over the stored events, each
    checked against its recorded prefix; if one no longer matches (or is gone), the head is
    the link before's, the newest the chain recorded whole."""
    inside = _inside(rows, at)
    if inside is None:
        return _head(next((r for r in rows if r.position <= at), None))
    row, before = inside
    stored = {r.notification_id: r for r in records}
    head, previous = _head(before), bytes.fromhex(before.hash) if before else GENESIS
    for position, prefix in row.entries():
        record = stored.get(position)
        if position > at or record is None:
            break
        previous = link(previous, record)
        if previous[:PREFIX].hex() != prefix:
            return _head(before)
        head = ChainHead(position=position, hash=previous.hex())
    return head


async def chain_head(conn: psycopg.AsyncConnection[Any], at: int | None = None) -> ChainHead | None:
    """The chain's head: its newest chained event and that event's chain hash, or the newest at or before
    position `at`; None while the chain (up to `at`) is empty."""
    if at is None:
        cur = await conn.execute(_NEWEST)
        newest = await cur.fetchone()
        return _head(CHAIN.decode(newest) if newest else None)
    cur = await conn.execute(_NEAR, (_span(at),))
    rows = [CHAIN.decode(r) for r in await cur.fetchall()]
    records: list[StoredRecord] = []
    if (inside := _inside(rows, at)) is not None:
        cur = await conn.execute(_BETWEEN, (inside[0].link * LINK_SPAN, at))
        records = [_stored(r) for r in await cur.fetchall()]
    return _head_at(rows, at, records)


def chain_head_sync(conn: psycopg.Connection[Any], at: int | None = None) -> ChainHead | None:
    """`chain_head` over a synchronous connection (the CLI, export jobs in a worker thread)."""
    if at is None:
        newest = conn.execute(_NEWEST).fetchone()
        return _head(CHAIN.decode(newest) if newest else None)
    rows = [CHAIN.decode(r) for r in conn.execute(_NEAR, (_span(at),)).fetchall()]
    records: list[StoredRecord] = []
    if (inside := _inside(rows, at)) is not None:
        records = [_stored(r) for r in conn.execute(_BETWEEN, (inside[0].link * LINK_SPAN, at)).fetchall()]
    return _head_at(rows, at, records)


def _stored(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(int(row[0]), row[1], int(row[2]), str(row[3]), bytes(row[4]))


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


def _links(conn: psycopg.Connection[Any], batch: int) -> Iterator[tuple[int, str, str | None]]:
    """Every chained event as (position, hash prefix, full hash if it ends its link), in order."""
    with conn.cursor(name="wl_chain_links") as cur:
        cur.itersize = max(1, batch // LINK_SPAN)
        cur.execute(f"{CHAIN.select} ORDER BY link")
        for record in cur:
            row = CHAIN.decode(record)
            for position, prefix in row.entries():
                yield position, prefix, row.hash if position == row.position else None


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
        newest = conn.execute(_NEWEST).fetchone()
        head = _head(CHAIN.decode(newest) if newest else None)
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
            if previous[:PREFIX].hex() != current[1] or current[2] not in (None, previous.hex()):
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
    """The chain's head (at or before `at`) as `(position, hash)`, the form export manifests take."""
    head = chain_head_sync(conn, at)
    return (head.position, head.hash) if head else None
