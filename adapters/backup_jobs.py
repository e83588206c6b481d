"""Backups as jobs: making an archive between the log's record of its request and of its outcome, the
archives kept in the data directory, and restoring one into a fresh store.

Archives live in `<data dir>/backups/` (never served as files: the API hands one out by
a name it checks against its own list), each beside a small `<name>.json` that says, without
the passphrase, what it holds. One backup or restore runs at a time in a process;
`progress` says how far it is.

A restore checks the whole archive first and changes nothing unless every check holds;
then it writes the events and keys into an empty store, records the restore there,
rebuilds every read model by replay and verifies the hash chain (`RestoreTools`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
import structlog
from psycopg import sql

from adapters.backup_archive import FORMAT_VERSION, ArchiveError, DamagedArchive
from adapters.backups import (
    CHECKPOINTS, HeadReader, Linker, Link, Manifest, Snapshot, archived_checkpoints, check_archive, create_archive, restore_events,
)
from adapters.eventlog import EventLog, StoreNotEmpty
from adapters.eventstore import StoreUnitOfWork, WattLedger, ensure_events_schema, store_env
from adapters.export_files import sha256_file
from domain.backup import ArchiveSummary
from domain.backup_handlers import BackupHandlers
from domain.errors import BackupBusy, BackupNotFound, BackupRefused, InvalidRequest
from domain.ports import Clock

log = structlog.get_logger(__name__)

__all__ = ["ArchiveEntry", "BackupJobs", "Progress", "RestoreOutcome", "RestoreTools", "list_archives", "restore_archive", "summary_of"]

SUFFIX: Final = ".wlbackup"
NAME: Final = re.compile(r"^wattledger_backup_\d{8}_\d{6}_[0-9a-f]{8}\.wlbackup$")
DATABASE_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
LEVELS: Final = {"fast": 1, "normal": 6, "high": 9}
INCLUDES: Final = ["events", "keys", "config"]


class ArchiveEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One archive as the list shows it (the seed's fields, then what the manifest says)."""

    filename: str
    size: int
    created: datetime
    type: str
    includes: list[str]
    backup_id: UUID | None = None
    sha256: str | None = None
    event_count: int | None = None
    last_position: int | None = None
    chain_head: Link | None = None
    schedule_id: UUID | None = None
    """The schedule that made it (None: made by hand); its retention prunes it."""


class Progress(msgspec.Struct, kw_only=True):
    """The backup or restore running in this process, or the last one: `idle`, `running`, `completed`, `failed`."""

    status: str = "idle"
    operation: str | None = None
    filename: str | None = None
    progress: float = 0.0
    phase: str | None = None
    error: str | None = None


def summary_of(filename: str, size: int, sha256: str, manifest: Manifest) -> ArchiveSummary:
    head = manifest.chain_head
    return ArchiveSummary(
        filename=filename, size=size, sha256=sha256, count=manifest.count, first_position=manifest.first_position,
        last_position=manifest.last_position, chain_position=head.position if head else None,
        chain_hash=head.hash if head else None,
    )  # fmt: skip


@dataclass(frozen=True)
class RestoreTools:
    """What a restore needs from the floors above: the chain's hash, and replaying the read models."""

    link: Linker
    chain_head: HeadReader
    rebuild: Callable[[WattLedger, str], None]
    """Replay every read model of the store at a database URL from its first event (blocking)."""
    verify_chain: Callable[[str], str | None]
    """Verify the hash chain of the store at a database URL: None if intact, else the problem."""
    export_checkpoints: Callable[[str, int], Iterable[bytes]] = lambda _url, _up_to: ()
    """The read models' newest checkpoints at or before a position, as a backup carries them (none by default)."""
    import_checkpoints: Callable[[str, Iterable[bytes]], int] = lambda _url, _messages: 0
    """Store carried checkpoints in the store at a database URL, before its replay; returns how many."""


def _refused(exc: ArchiveError) -> BackupRefused:
    return BackupRefused(f"the archive cannot be restored: {exc}")


async def restore_archive(
    path: Path, passphrase: str, target: WattLedger, target_url: str, tools: RestoreTools, *, actor: str,
    secret_key_fingerprint: str | None, filename: str | None = None, phase: Callable[[str], None] = lambda _: None,
) -> Manifest:  # fmt: skip
    """Check `path` whole, then restore it into the empty store `target` (at `target_url`), replay every read
    model there and verify its chain. Raises BackupRefused before anything is written if a check fails."""
    phase("check")
    if EventLog(target).max_id():
        raise BackupRefused("the store restored into must be empty: give a new database")
    try:
        manifest = await asyncio.to_thread(check_archive, path, passphrase, link=tools.link)
    except ArchiveError as exc:
        raise _refused(exc) from None
    if manifest.secret_key_fingerprint is not None and manifest.secret_key_fingerprint != secret_key_fingerprint:
        raise BackupRefused(
            "the archive's installation sealed its secrets with WATTLEDGER_SECRET_KEY: set the same value here"
        )
    phase("events")
    try:
        written = await asyncio.to_thread(restore_events, path, passphrase, target)
    except ArchiveError as exc:
        raise _refused(exc) from None
    except StoreNotEmpty:
        raise BackupRefused("the store restored into must be empty: give a new database") from None
    summary = summary_of(filename or path.name, path.stat().st_size, await asyncio.to_thread(sha256_file, path),
                         manifest)  # fmt: skip
    await BackupHandlers(StoreUnitOfWork(target)).restored(manifest.backup_id, summary, actor=actor)
    if CHECKPOINTS in manifest.includes:
        phase("checkpoints")
        carried = await asyncio.to_thread(tools.import_checkpoints, target_url, archived_checkpoints(path, passphrase))
        log.info("backup.checkpoints_restored", checkpoints=carried)
    phase("replay")
    await asyncio.to_thread(tools.rebuild, target, target_url)
    phase("verify")
    problem = await asyncio.to_thread(tools.verify_chain, target_url)
    if problem is not None:
        raise DamagedArchive(f"the restored store's hash chain does not verify: {problem}")
    log.info("backup.restored", events=written, last_position=manifest.last_position, actor=actor)
    return manifest


class BackupJobs:
    """The archives in one directory and the backups of one process, recorded in the log."""

    def __init__(
        self, app: WattLedger, database_url: str, directory: Path, tools: RestoreTools, clock: Clock, *,
        passphrase: str | None, config: dict[str, Any], secret_key_fingerprint: str | None,
    ) -> None:  # fmt: skip
        self.app = app
        self.database_url = database_url
        self.directory = directory
        self.tools = tools
        self.clock = clock
        self.passphrase = passphrase
        self.config = config
        self.secret_key_fingerprint = secret_key_fingerprint
        self.handlers = BackupHandlers(StoreUnitOfWork(app))
        self.progress = Progress()
        self._lock = asyncio.Lock()

    def new_name(self) -> str:
        return f"wattledger_backup_{self.clock.now():%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:8]}{SUFFIX}"

    def need_passphrase(self, passphrase: str | None) -> str:
        """The passphrase given, else the configured one; raises InvalidRequest without either."""
        chosen = passphrase or self.passphrase
        if not chosen:
            raise InvalidRequest("a backup is encrypted: give a passphrase or set WATTLEDGER_BACKUP_PASSPHRASE")
        return chosen

    async def create(
        self, *, kind: str, actor: str, passphrase: str | None = None, compression: str = "normal",
        kdf: Any = None, schedule_id: UUID | None = None,
    ) -> ArchiveEntry:  # fmt: skip
        """Make an archive now; returns its entry. Raises InvalidRequest (no passphrase, unknown compression),
        BackupBusy while another backup or restore runs, and what the store or the disk raise (recorded)."""
        chosen = self.need_passphrase(passphrase)
        if compression not in LEVELS:
            raise InvalidRequest(f"unknown compression {compression!r}; one of {', '.join(LEVELS)}")
        if self._lock.locked():
            raise BackupBusy("a backup or restore is already running")
        async with self._lock:
            backup_id = uuid.uuid4()
            options: dict[str, Any] = {"compression": compression}
            if schedule_id is not None:
                options["schedule_id"] = str(schedule_id)
            await self.handlers.request(backup_id, kind=kind, options=options, actor=actor)
            name = self.new_name()
            self.progress = Progress(status="running", operation="backup", filename=name, phase="events")
            self.directory.mkdir(parents=True, exist_ok=True)
            snapshot = Snapshot(
                format_version=FORMAT_VERSION, backup_id=backup_id, kind=kind, created_at=self.clock.now(),
                up_to_position=0, chain_head=None, secret_key_fingerprint=self.secret_key_fingerprint,
                includes=INCLUDES,
            )  # fmt: skip

            def progress(done: int, total: int) -> None:
                self.progress.progress = round(done / total, 4) if total else 1.0

            path = self.directory / name
            try:
                manifest = await asyncio.to_thread(
                    create_archive, self.app, self.database_url, path, chosen, snapshot=snapshot,
                    config=self.config, link=self.tools.link, chain_head=self.tools.chain_head, progress=progress,
                    level=LEVELS[compression], kdf=kdf,
                    checkpoints=lambda up_to: self.tools.export_checkpoints(self.database_url, up_to),
                )  # fmt: skip
                digest = await asyncio.to_thread(sha256_file, path)
                entry = ArchiveEntry(
                    filename=name, size=path.stat().st_size, created=snapshot.created_at, type=kind, includes=manifest.includes,
                    backup_id=backup_id, sha256=digest, event_count=manifest.count,
                    last_position=manifest.last_position, chain_head=manifest.chain_head, schedule_id=schedule_id,
                )  # fmt: skip
                self._sidecar(name).write_bytes(msgspec.json.encode(entry))
                await self.handlers.complete(backup_id, summary_of(name, entry.size, digest, manifest), actor=actor)
            except Exception as exc:
                self.progress.status, self.progress.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
                await self._record_failure(backup_id, self.progress.error, actor)
                raise
            self.progress.status, self.progress.progress, self.progress.phase = "completed", 1.0, None
            log.info("backup.created", filename=name, events=manifest.count, actor=actor)
            return entry

    async def restore_into_new_database(
        self, path: Path, passphrase: str, *, database: str | None, actor: str
    ) -> RestoreOutcome:
        """Restore `path` into a database created for it on this server, never the one this process runs on.

        The database is created empty (BackupRefused if the name is taken), and dropped again if any
        check or step fails; the running system changes in no way but for the record, in its log, of a
        refused restore (the archive's SHA-256 and size, the reason and the actor). Switching over is a restart with
        DATABASE_URL set to it. Raises BackupRefused, BackupBusy, InvalidRequest for a bad name."""
        name = database or f"{self._database_name()}_restored_{self.clock.now():%Y%m%d%H%M%S}"
        if not DATABASE_NAME.match(name):
            raise InvalidRequest("database must be 1-63 lower-case letters, digits or '_', starting with a letter")
        if self._lock.locked():
            raise BackupBusy("a backup or restore is already running")
        async with self._lock:
            self.progress = Progress(status="running", operation="restore", filename=path.name, phase="check")
            try:
                url = await asyncio.to_thread(_create_database, self.database_url, name)
                try:
                    target = await asyncio.to_thread(_open_store, url)
                    try:
                        manifest = await restore_archive(
                            path, passphrase, target, url, self.tools, actor=actor,
                            secret_key_fingerprint=self.secret_key_fingerprint,
                            phase=lambda phase: setattr(self.progress, "phase", phase),
                        )  # fmt: skip
                    finally:
                        await asyncio.to_thread(target.close)
                except BaseException:
                    await asyncio.to_thread(_drop_database, self.database_url, name)
                    raise
            except Exception as exc:
                self.progress.status, self.progress.error = "failed", str(exc)[:500]
                if isinstance(exc, BackupRefused):
                    await self._record_refusal(path, str(exc), actor)
                raise
            self.progress.status, self.progress.progress, self.progress.phase = "completed", 1.0, None
            return RestoreOutcome(database=name, events=manifest.count, last_position=manifest.last_position,
                                  chain_head=manifest.chain_head)  # fmt: skip

    async def prune(self, schedule_id: UUID, retention_days: int, *, actor: str) -> list[str]:
        """Delete the archives schedule `schedule_id` made more than `retention_days` ago; their names."""
        cutoff = self.clock.now() - timedelta(days=retention_days)
        old = [e.filename for e in self.list() if e.schedule_id == schedule_id and e.created < cutoff]
        for filename in old:
            await self.delete(filename, actor=actor, reason="pruned")
        return old

    def _database_name(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.database_url).get("dbname") or "wattledger")

    async def _record_failure(self, backup_id: UUID, reason: str, actor: str) -> None:
        try:
            await self.handlers.fail(backup_id, reason, actor=actor)
        except Exception as exc:
            log.warning("backup.failure_not_recorded", backup=str(backup_id), error=repr(exc))

    async def _record_refusal(self, path: Path, reason: str, actor: str) -> None:
        try:
            digest, size = await asyncio.to_thread(sha256_file, path), path.stat().st_size
            await self.handlers.refused(sha256=digest, size=size, reason=reason, actor=actor)
        except Exception as exc:
            log.warning("backup.refusal_not_recorded", error=repr(exc))

    def _sidecar(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def list(self) -> list[ArchiveEntry]:
        """Every archive in the directory with its entry, newest first."""
        return list_archives(self.directory)

    def entry(self, filename: str) -> ArchiveEntry | None:
        """The entry of the archive `filename`, or None for a name that is not an archive here."""
        return archive_entry(self.directory, filename)

    def file(self, filename: str) -> Path:
        """The archive's path; raises BackupNotFound for a name that is not an archive here."""
        if self.entry(filename) is None:
            raise BackupNotFound(f"no backup {filename}")
        return self.directory / filename

    async def delete(self, filename: str, *, actor: str, reason: str = "deleted") -> None:
        """Remove an archive and record it. Raises BackupNotFound."""
        entry = self.entry(filename)
        if entry is None:
            raise BackupNotFound(f"no backup {filename}")
        if entry.backup_id is not None:
            await self.handlers.delete(entry.backup_id, reason=reason, actor=actor)
        (self.directory / filename).unlink(missing_ok=True)
        self._sidecar(filename).unlink(missing_ok=True)
        log.info("backup.deleted", filename=filename, reason=reason, actor=actor)


class RestoreOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A restore into a new database: its name, what it holds, and how to switch over to it."""

    database: str
    events: int
    last_position: int | None
    chain_head: Link | None
    switch_over: str = "restart WattLedger with DATABASE_URL naming this database; the running one is unchanged"


def _with_dbname(database_url: str, name: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(database_url)
    parts["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def _create_database(database_url: str, name: str) -> str:
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        raise BackupRefused(f"a database named {name} exists already: name a new one") from None
    except psycopg.errors.InsufficientPrivilege:
        raise BackupRefused("this server's database user may not create databases: restore with the CLI") from None
    return _with_dbname(database_url, name)


def _drop_database(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _open_store(database_url: str) -> WattLedger:
    ensure_events_schema(database_url)
    return WattLedger(store_env(database_url, pool_size=2))


def list_archives(directory: Path) -> list[ArchiveEntry]:
    """Every archive in `directory` with its entry, newest first."""
    found = (archive_entry(directory, path.name) for path in directory.glob(f"*{SUFFIX}"))
    return sorted((e for e in found if e is not None), key=lambda e: (e.created, e.filename), reverse=True)


def archive_entry(directory: Path, filename: str) -> ArchiveEntry | None:
    """The entry of the archive `filename` in `directory`, or None for a name that is not an archive there."""
    if not NAME.match(filename) or not (directory / filename).is_file():
        return None
    try:
        return msgspec.json.decode((directory / f"{filename}.json").read_bytes(), type=ArchiveEntry)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        stat = (directory / filename).stat()
        return ArchiveEntry(filename=filename, size=stat.st_size, type="unknown", includes=[],
                            created=datetime.fromtimestamp(stat.st_mtime).astimezone())  # fmt: skip


def fingerprint(box_key: bytes | None) -> str | None:
    """A short, one-way mark of the secret box key derived from WATTLEDGER_SECRET_KEY (None without one)."""
    if box_key is None:
        return None
    return hashlib.sha256(b"wattledger backup fingerprint\x00" + box_key).hexdigest()[:32]
