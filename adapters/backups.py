"""Backups of the whole event store: writing an archive, checking one whole, restoring it into an empty store.

An archive (`adapters.backup_archive`) holds, in order: `snapshot.json` (what was taken and
when: the backup's id, the newest position included, the hash chain's head at or before it),
`events` (every stored event up to that position, in sections of MessagePack rows
`[position, originator id, version, topic, state]`, the bytes exactly as stored), where the
installation keeps them `checkpoints` (each read model's newest checkpoint at or before that
position, as the caller exports them, so a restore need not replay the whole log), `keys.json`
(the secret box and JWT signing keys of `wl_auth`, which sealed and signed what the events
refer to), `config.json` (the settings, secrets masked) and `manifest.json` (format version,
event count, first and last position, the chain head, the head recomputed over the archived
events, and each member's size and SHA-256).

The events are read through `EventLog` up to the newest position at the start, which is a
consistent cut while writers carry on: the store's writers take a table lock, so every lower
position has committed (or never will). The chain's hash function comes from the caller
(the hash chain is a read model, a floor above).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import dict_row
from eventsourcing.persistence import Notification

from adapters.backup_archive import FORMAT_VERSION, ArchiveWriter, DamagedArchive, KdfParams, NewerFormat, read_members
from adapters.eventlog import EventLog
from adapters.eventstore import WattLedger
from adapters.history import StoredRecord
from adapters.identity import AUTH_DDL, AUTH_SCHEMA, SECRETS_TABLE, SIGNING_KEYS_TABLE

__all__ = ["Linker", "Manifest", "Snapshot", "archived_checkpoints", "check_archive", "create_archive", "restore_events"]

SECTION: Final = 1000
GENESIS: Final = bytes(32)
EVENTS, KEYS, CONFIG, SNAPSHOT, MANIFEST = "events", "keys.json", "config.json", "snapshot.json", "manifest.json"
CHECKPOINTS: Final = "checkpoints"
_ROWS = msgspec.msgpack.Decoder(list[tuple[int, bytes, int, str, bytes]])

Linker = Callable[[bytes, StoredRecord], bytes]
"""The hash chain's step: the hash of a record after the previous hash."""
HeadReader = Callable[[psycopg.Connection[Any], int | None], tuple[int, str] | None]


class Link(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    hash: str


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What a backup took: written first, so a reader knows where the chain head must be met."""

    format_version: int
    backup_id: UUID | None
    kind: str
    created_at: datetime
    up_to_position: int
    chain_head: Link | None
    secret_key_fingerprint: str | None = None
    includes: list[str] = msgspec.field(default_factory=list)


class Member(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    bytes: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What an archive holds and how to check it; the last member."""

    format_version: int
    backup_id: UUID | None
    kind: str
    created_at: datetime
    count: int
    first_position: int | None
    last_position: int | None
    up_to_position: int
    chain_head: Link | None
    """The hash chain's newest link at or before `up_to_position`, as the store recorded it."""
    computed_head: Link | None
    """The chain recomputed over the archived events, at `last_position`."""
    members: list[Member]
    includes: list[str]
    secret_key_fingerprint: str | None = None


def _keys(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of the secret box and signing key tables (none where a table is not there yet)."""
    queries = {
        "secrets": f"SELECT name, value, created_at FROM {SECRETS_TABLE} ORDER BY name",
        "signing_keys": f"SELECT kid, secret, created_at FROM {SIGNING_KEYS_TABLE} ORDER BY created_at, kid",
    }
    found: dict[str, list[dict[str, Any]]] = {}
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for (name, query), table in zip(queries.items(), (SECRETS_TABLE, SIGNING_KEYS_TABLE), strict=True):
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (table,)).fetchone()
            found[name] = conn.execute(query).fetchall() if exists and exists["found"] else []
    return found


class _Members:
    """Member sizes and digests as they are written or read."""

    def __init__(self) -> None:
        self.digests: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}

    def add(self, name: str, data: bytes) -> None:
        self.digests.setdefault(name, hashlib.sha256()).update(data)
        self.sizes[name] = self.sizes.get(name, 0) + len(data)

    def listed(self) -> list[Member]:
        return [Member(name=n, bytes=self.sizes[n], sha256=d.hexdigest()) for n, d in self.digests.items()]


def create_archive(
    app: WattLedger, database_url: str, path: Path, passphrase: str, *, snapshot: Snapshot, config: dict[str, Any],
    link: Linker, chain_head: HeadReader, progress: Callable[[int, int], None] | None = None, level: int = 6,
    kdf: KdfParams | None = None, checkpoints: Callable[[int], Iterable[bytes]] | None = None,
) -> Manifest:  # fmt: skip
    """Write the archive of every event up to the store's newest position now; returns its manifest.

    `snapshot` gives the id, kind, time and includes; its positions and chain head are filled
    in here. `checkpoints`, given the position, yields the read models' checkpoints at or before
    it, which the archive carries (member `checkpoints`, listed in the manifest's includes) so
    that a restore replays only the events after them. Raises DamagedArchive when the stored history no longer matches the hash chain
    it recorded (nothing is left behind), and what the store or the disk raise."""
    log = EventLog(app)
    stop = log.max_id()
    with psycopg.connect(database_url, autocommit=True) as conn:
        head = chain_head(conn, stop)
    snapshot = msgspec.structs.replace(
        snapshot, up_to_position=stop,
        chain_head=Link(position=head[0], hash=head[1]) if head else None,
    )  # fmt: skip
    members = _Members()
    writer = ArchiveWriter(path, passphrase, level=level, kdf=kdf, format_version=snapshot.format_version)
    try:

        def put(name: str, data: bytes) -> None:
            members.add(name, data)
            writer.write(name, data)

        put(SNAPSHOT, msgspec.json.encode(snapshot))
        previous, count, first, last, after = GENESIS, 0, None, None, 0
        while section := log.read_raw(after, SECTION, stop=stop):
            rows = []
            for n in section:
                originator = n.originator_id if isinstance(n.originator_id, UUID) else UUID(n.originator_id)
                previous = link(previous, StoredRecord(n.id, originator, n.originator_version, n.topic, n.state))
                if head is not None and n.id == head[0] and previous.hex() != head[1]:
                    raise DamagedArchive(
                        f"the stored history no longer matches its hash chain at position {n.id}: nothing "
                        "was backed up; see `wattledger audit verify`"
                    )
                rows.append((n.id, originator.bytes, n.originator_version, n.topic, n.state))
            put(EVENTS, msgspec.msgpack.encode(rows))
            first = section[0].id if first is None else first
            last, after, count = section[-1].id, section[-1].id, count + len(section)
            if progress is not None:
                progress(after, stop)
        includes = [i for i in snapshot.includes if i != CHECKPOINTS]
        for message in checkpoints(stop) if checkpoints is not None else ():
            put(CHECKPOINTS, message)
            includes += [] if CHECKPOINTS in includes else [CHECKPOINTS]
        put(KEYS, msgspec.json.encode(_keys(database_url)))
        put(CONFIG, msgspec.json.encode(config))
        manifest = Manifest(
            format_version=snapshot.format_version, backup_id=snapshot.backup_id, kind=snapshot.kind,
            created_at=snapshot.created_at, count=count, first_position=first, last_position=last,
            up_to_position=stop, chain_head=snapshot.chain_head,
            computed_head=Link(position=last, hash=previous.hex()) if last is not None else None,
            members=members.listed(), includes=includes,
            secret_key_fingerprint=snapshot.secret_key_fingerprint,
        )  # fmt: skip
        writer.write(MANIFEST, msgspec.json.format(msgspec.json.encode(manifest), indent=2))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return manifest


def _decode(data: bytes, kind: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise DamagedArchive(f"the archive's {what} cannot be read") from None


def check_archive(path: Path, passphrase: str, *, link: Linker) -> Manifest:
    """Read the whole archive and check it: every part authenticates, the format is one this version
    reads, every member matches the manifest's size and SHA-256, the events are in order and their
    recomputed hash chain meets the recorded head. Returns the manifest; raises an ArchiveError
    (WrongPassphrase, DamagedArchive, TruncatedArchive, NewerFormat) saying why not."""
    members = _Members()
    snapshot: Snapshot | None = None
    manifest_bytes = b""
    previous, count, first, last = GENESIS, 0, None, 0
    met_head = False
    for name, data in read_members(path, passphrase):
        if name == MANIFEST:
            manifest_bytes += data
            continue
        if manifest_bytes:
            raise DamagedArchive("the archive holds data after its manifest")
        members.add(name, data)
        if name == SNAPSHOT:
            snapshot = _decode(data, Snapshot, "snapshot")
            if snapshot.format_version > FORMAT_VERSION:
                raise NewerFormat(f"the archive has format {snapshot.format_version}; this version reads "
                                  f"format {FORMAT_VERSION} and older")  # fmt: skip
        elif name == EVENTS:
            if snapshot is None:
                raise DamagedArchive("the archive's events come before its snapshot")
            for position, originator, version, topic, state in _events(data):
                if position <= last:
                    raise DamagedArchive(f"the archive's events are out of order at position {position}")
                previous = link(previous, StoredRecord(position, UUID(bytes=originator), version, topic, state))
                head = snapshot.chain_head
                if head is not None and position == head.position:
                    if previous.hex() != head.hash:
                        raise DamagedArchive(f"the archived events do not lead to the recorded chain head "
                                             f"at position {position}")  # fmt: skip
                    met_head = True
                first = position if first is None else first
                last, count = position, count + 1
    manifest: Manifest = _decode(manifest_bytes, Manifest, "manifest")
    if manifest.format_version > FORMAT_VERSION:
        raise NewerFormat(f"the archive has format {manifest.format_version}; this version reads format "
                          f"{FORMAT_VERSION} and older")  # fmt: skip
    if snapshot is None or {m.name: m for m in manifest.members} != {m.name: m for m in members.listed()}:
        raise DamagedArchive("the archive's members do not match its manifest's checksums")
    computed = Link(position=last, hash=previous.hex()) if count else None
    if (count, first, last or None) != (manifest.count, manifest.first_position, manifest.last_position) \
            or computed != manifest.computed_head:
        raise DamagedArchive("the archive's events do not match its manifest (count, positions or chain)")
    if snapshot.chain_head is not None and not met_head:
        raise DamagedArchive("the archive lacks the event at its recorded chain head")
    return manifest


def _events(data: bytes) -> list[tuple[int, bytes, int, str, bytes]]:
    try:
        return _ROWS.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise DamagedArchive("the archive's events cannot be read") from None


def archived_keys(path: Path, passphrase: str) -> dict[str, list[dict[str, Any]]]:
    """The `keys.json` member of a checked archive."""
    data = b"".join(d for name, d in read_members(path, passphrase) if name == KEYS)
    keys: dict[str, list[dict[str, Any]]] = _decode(data, dict[str, list[dict[str, Any]]], "keys")
    return keys


def archived_config(path: Path, passphrase: str) -> dict[str, Any]:
    """The `config.json` member of a checked archive (settings as they were, secrets masked)."""
    config: dict[str, Any] = _decode(
        b"".join(d for name, d in read_members(path, passphrase) if name == CONFIG), dict[str, Any], "settings"
    )
    return config


def archived_checkpoints(path: Path, passphrase: str) -> Iterator[bytes]:
    """The `checkpoints` member of a checked archive, message by message (nothing for an archive without)."""
    return (data for name, data in read_members(path, passphrase) if name == CHECKPOINTS)


def _sections(path: Path, passphrase: str) -> Iterator[Sequence[Notification]]:
    for name, data in read_members(path, passphrase):
        if name == EVENTS:
            yield [Notification(id=p, originator_id=UUID(bytes=o), originator_version=v, topic=t, state=s)
                   for p, o, v, t, s in _events(data)]  # fmt: skip


def restore_events(path: Path, passphrase: str, target: WattLedger) -> int:
    """Write a checked archive's events, each at its own position, and its keys into `target`, which must be
    empty: one transaction, so an archive that fails its checks on this second reading changes nothing.
    Returns the events written. Raises StoreNotEmpty, an ArchiveError, and what the store raises."""
    keys = archived_keys(path, passphrase)

    def put_keys(cur: psycopg.Cursor[Any]) -> None:
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}")
        for statement in filter(str.strip, AUTH_DDL.split(";")):
            cur.execute(statement)
        cur.execute(f"DELETE FROM {SECRETS_TABLE}")
        cur.execute(f"DELETE FROM {SIGNING_KEYS_TABLE}")
        for row in keys.get("secrets", []):
            cur.execute(f"INSERT INTO {SECRETS_TABLE} (name, value, created_at) VALUES (%s, %s, %s)",
                        (row["name"], row["value"], row["created_at"]))  # fmt: skip
        for row in keys.get("signing_keys", []):
            cur.execute(f"INSERT INTO {SIGNING_KEYS_TABLE} (kid, secret, created_at) VALUES (%s, %s, %s)",
                        (row["kid"], row["secret"], row["created_at"]))  # fmt: skip

    return EventLog(target).restore(_sections(path, passphrase), then=put_keys)
