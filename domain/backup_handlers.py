"""The use cases of backups: record that one was asked for, how it ended, its deletion, and restores made or refused."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from domain.backup import ArchiveSummary, Backup, BackupRestore
from domain.errors import BackupNotFound
from domain.ports import EventStore


class BackupHandlers:
    """Records the facts of each backup in the log, over the store port only.

    The archive itself is written and read by an adapter; these handlers bracket it
    with `request` before it starts and `complete` or `fail` after.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def request(self, backup_id: UUID, *, kind: str, options: dict[str, Any], actor: str) -> int:
        """Record the request; returns its position. Raises InvalidRequest for an unknown kind."""
        return await self.store.save(Backup.request(backup_id, kind=kind, options=options, actor=actor))

    async def complete(self, backup_id: UUID, summary: ArchiveSummary, *, actor: str) -> int:
        """Record what the archive holds. Raises BackupNotFound, BackupSettled."""
        backup = await self._load(backup_id)
        backup.complete(summary, actor=actor)
        return await self.store.save(backup)

    async def fail(self, backup_id: UUID, reason: str, *, actor: str) -> int:
        """Record that the backup failed and why. Raises BackupNotFound, BackupSettled."""
        backup = await self._load(backup_id)
        backup.fail(reason, actor=actor)
        return await self.store.save(backup)

    async def delete(self, backup_id: UUID, *, reason: str, actor: str) -> int:
        """Record that the archive was removed (`deleted` or `pruned`). Raises BackupNotFound, BackupSettled."""
        backup = await self._load(backup_id)
        backup.delete(reason, actor=actor)
        return await self.store.save(backup)

    async def restored(self, backup_id: UUID | None, summary: ArchiveSummary, *, actor: str) -> int:
        """Record, in the store restored into, which archive it came from and what it held."""
        restore = BackupRestore.record(uuid.uuid4(), backup_id=backup_id, summary=summary, actor=actor)
        return await self.store.save(restore)

    async def refused(self, *, sha256: str, size: int, reason: str, actor: str) -> int:
        """Record that a restore of the archive with this digest was refused before anything was written."""
        return await self.store.save(BackupRestore.refuse(uuid.uuid4(), sha256=sha256, size=size, reason=reason,
                                                          actor=actor))  # fmt: skip

    async def _load(self, backup_id: UUID) -> Backup:
        backup = await self.store.aggregate(backup_id, Backup)
        if backup is None:
            raise BackupNotFound(f"no backup {backup_id}")
        return backup
