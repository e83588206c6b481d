"""Backups and restores as facts of the log: who made which archive, what it held, where it went.

A `Backup` is requested (manual or scheduled, with its options, by an actor), then
completed (the archive's name, size and SHA-256, how many events, which positions, the
hash chain head it ends on) or failed; deleting or pruning its archive is recorded too.
A `BackupRestore` records, in the store an archive was restored into, which archive it
was and what it held; or, in the running store, that an uploaded archive was refused
(its SHA-256 and size, and why) and by whom. The archives themselves live outside the
log, encrypted.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import BackupSettled, InvalidRequest

BACKUP_KINDS = ("manual", "scheduled")


class ArchiveSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished archive holds: its file, the events' range, and the chain link it ends on."""

    filename: str
    size: int
    sha256: str
    count: int
    first_position: int | None
    last_position: int | None
    chain_position: int | None
    chain_hash: str | None


class Backup(Aggregate):
    """One backup archive. Its id is chosen before it is requested and is written into the archive."""

    class Requested(Aggregate.Created):
        kind: str
        options: dict[str, Any]
        actor: str

    class Completed(Aggregate.Event):
        filename: str
        size: int
        sha256: str
        count: int
        first_position: int | None
        last_position: int | None
        chain_position: int | None
        chain_hash: str | None
        actor: str

    class Failed(Aggregate.Event):
        reason: str
        actor: str

    class Deleted(Aggregate.Event):
        reason: str
        actor: str

    def __init__(self, *, kind: str, options: dict[str, Any], actor: str) -> None:
        self.kind = kind
        self.options = dict(options)
        self.requested_by = actor
        self.outcome: str | None = None
        self.filename: str | None = None
        self.deleted = False

    @classmethod
    def request(cls, backup_id: UUID, *, kind: str, options: dict[str, Any], actor: str) -> Backup:
        """Raises InvalidRequest for a kind other than manual or scheduled."""
        if kind not in BACKUP_KINDS:
            raise InvalidRequest(f"unknown backup type {kind!r}; one of {', '.join(BACKUP_KINDS)}")
        return cls._create(cls.Requested, id=backup_id, kind=kind, options=dict(options), actor=actor)

    def check_open(self) -> None:
        """Raises BackupSettled once the backup has completed or failed."""
        if self.outcome is not None:
            raise BackupSettled(f"the backup already {self.outcome}")

    def complete(self, summary: ArchiveSummary, *, actor: str) -> None:
        self.check_open()
        self._completed(
            filename=summary.filename, size=summary.size, sha256=summary.sha256, count=summary.count,
            first_position=summary.first_position, last_position=summary.last_position,
            chain_position=summary.chain_position, chain_hash=summary.chain_hash, actor=actor,
        )  # fmt: skip

    def fail(self, reason: str, *, actor: str) -> None:
        self.check_open()
        self._failed(reason=reason[:500], actor=actor)

    def delete(self, reason: str, *, actor: str) -> None:
        """Record that the archive was removed (`deleted` by a user, `pruned` by retention); once only."""
        if self.deleted:
            raise BackupSettled("the backup's archive was already deleted")
        self._deleted(reason=reason, actor=actor)

    @event(Completed)
    def _completed(
        self, filename: str, size: int, sha256: str, count: int, first_position: int | None,
        last_position: int | None, chain_position: int | None, chain_hash: str | None, actor: str,
    ) -> None:  # fmt: skip
        self.outcome = "completed"
        self.filename = filename

    @event(Failed)
    def _failed(self, reason: str, actor: str) -> None:
        self.outcome = "failed"

    @event(Deleted)
    def _deleted(self, reason: str, actor: str) -> None:
        self.deleted = True


class BackupRestore(Aggregate):
    """A restore: into this store, the archive it came from and what it held (recorded once, after the
    events); or a restore refused before anything was written, with the archive's digest and the reason."""

    class Restored(Aggregate.Created):
        backup_id: UUID | None
        filename: str
        sha256: str
        count: int
        last_position: int | None
        chain_position: int | None
        chain_hash: str | None
        actor: str

    class Refused(Aggregate.Created):
        sha256: str
        size: int
        reason: str
        actor: str

    def __init__(
        self, *, sha256: str, actor: str, backup_id: UUID | None = None, filename: str | None = None,
        count: int = 0, last_position: int | None = None, chain_position: int | None = None,
        chain_hash: str | None = None, size: int | None = None, reason: str | None = None,
    ) -> None:  # fmt: skip
        self.backup_id = backup_id
        self.filename = filename
        self.sha256 = sha256
        self.refused_because = reason

    @classmethod
    def record(cls, restore_id: UUID, *, backup_id: UUID | None, summary: ArchiveSummary, actor: str) -> BackupRestore:
        return cls._create(
            cls.Restored, id=restore_id, backup_id=backup_id, filename=summary.filename, sha256=summary.sha256,
            count=summary.count, last_position=summary.last_position, chain_position=summary.chain_position,
            chain_hash=summary.chain_hash, actor=actor,
        )  # fmt: skip

    @classmethod
    def refuse(cls, restore_id: UUID, *, sha256: str, size: int, reason: str, actor: str) -> BackupRestore:
        """Record that the archive with this digest was refused before anything was restored, and why."""
        return cls._create(cls.Refused, id=restore_id, sha256=sha256, size=size, reason=reason[:500], actor=actor)
