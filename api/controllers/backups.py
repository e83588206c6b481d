"""Backups (`/api/backups/...`), as the Kasa Monitor API has them: create, list, download, delete,
progress, restore from an uploaded archive, and schedules.

Every route needs `BACKUPS_MANAGE` (admins). Archives are encrypted with the passphrase given
at creation or `WATTLEDGER_BACKUP_PASSPHRASE`; without either, creating one is refused. Each
backup, deletion and restore is an event with its actor (`domain.backup`).

A restore never touches the database this process runs on: the upload is streamed into
quarantine in the data directory (at most `WATTLEDGER_MAX_UPLOAD_SIZE_MB`, else 413), checked
whole, and restored into a new database on the same server, whose read models are replayed
and whose hash chain is verified. Switching over is restarting with `DATABASE_URL` naming it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio.to_thread
import msgspec
import multipart  # type: ignore[import-untyped]  # litestar's own dependency; ships no type marker
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody
from litestar.response import File

from adapters.backup_jobs import ArchiveEntry, BackupJobs, Progress, RestoreOutcome
from domain.access import Permission, Principal
from domain.backup_schedule import Schedule, ScheduleSpec
from domain.backup_schedule_handlers import ScheduleHandlers
from domain.errors import InvalidRequest

NEEDS = {"permission": Permission.BACKUPS_MANAGE}
Passphrase = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_FORM_FIELD_LIMIT = 64 * 1024
"""The most a text field of the restore form may hold; the archive itself is bounded by `max_upload_bytes`
as it streams in (the route has no body limit of its own)."""


@dataclass(frozen=True, kw_only=True)
class BackupDeps:
    """The archives and backups of this process, where uploads wait while they are checked, and their limit."""

    jobs: BackupJobs
    schedules: ScheduleHandlers
    quarantine: Path
    max_upload_bytes: int


_NO_EXPORTS = "include_exports: data export files are not archived (make them again from the log); leave it false"


class CreateBackupRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's fields; logs and exports are not archived (the process logs to its output, and export
    files are made again from the log), so `includes` of the answer says what an archive holds.
    `include_exports: true` is refused (422) rather than ignored; `include_logs` is taken and ignored."""

    type: Literal["manual", "scheduled"] = "manual"
    include_logs: bool = False
    include_exports: bool = False
    compression: Literal["fast", "normal", "high"] = "normal"
    passphrase: Passphrase | None = None

    def __post_init__(self) -> None:
        if self.include_exports:
            raise ValueError(_NO_EXPORTS)


class ScheduleOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    include_logs: bool = False
    include_exports: bool = False
    compression: Literal["fast", "normal", "high"] = "normal"

    def __post_init__(self) -> None:
        if self.include_exports:
            raise ValueError(_NO_EXPORTS)


class ScheduleRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The seed's schedule body: `cron` is a five-field expression in UTC (checked with croniter)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    enabled: bool = True
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    options: ScheduleOptions = msgspec.field(default_factory=ScheduleOptions)

    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(name=self.name, cron=self.cron, enabled=self.enabled, retention_days=self.retention_days,
                            compression=self.options.compression)  # fmt: skip


class RestoreOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    restore_config: bool = True
    restore_database: bool = True
    database: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")] | None = None


class _Upload:
    """A multipart body streamed into one quarantine file (`file`) and small text fields, with a size bound."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.fields: dict[str, bytes] = {}
        self.size = 0
        self.has_file = False

    async def read(self, request: Request[Any, Any, Any]) -> None:
        content_type, options = multipart.parse_options_header(request.headers.get("content-type", ""))
        if content_type != "multipart/form-data" or not options.get("boundary"):
            raise HTTPException(status_code=415, detail="send the archive as multipart/form-data with a `file` field")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit + _FORM_FIELD_LIMIT:
            raise HTTPException(status_code=413, detail=f"the upload is larger than {self.limit} bytes")
        parser = multipart.PushMultipartParser(options["boundary"], max_segment_count=8)
        current: str | None = None
        with self.path.open("wb") as out:
            try:
                async for chunk in request.stream():
                    for event in parser.parse(chunk):
                        current = self._take(event, current, out)
                for event in parser.parse(b""):
                    current = self._take(event, current, out)
            except multipart.MultipartError as exc:
                raise HTTPException(status_code=400, detail=f"the multipart body is malformed: {exc}") from None
        if not self.has_file:
            raise HTTPException(status_code=400, detail="the upload has no `file` field")

    def _take(self, event: Any, current: str | None, out: Any) -> str | None:
        if isinstance(event, multipart.MultipartSegment):
            if event.name == "file":
                self.has_file = True
            return str(event.name)
        if event is None:
            return None
        if current == "file":
            self.size += len(event)
            if self.size > self.limit:
                raise HTTPException(status_code=413, detail=f"the archive is larger than {self.limit} bytes")
            out.write(event)
        elif current is not None:
            value = self.fields.get(current, b"") + event
            if len(value) > _FORM_FIELD_LIMIT:
                raise HTTPException(status_code=413, detail=f"the form field {current} is too long")
            self.fields[current] = value
        return current


class BackupsController(Controller):
    path = "/api/backups"
    tags = ["backups"]

    @get("", operation_id="listBackups", opt=NEEDS)
    async def list_backups(self, backup_deps: NamedDependency[BackupDeps]) -> list[ArchiveEntry]:
        """Every archive in the data directory, newest first: name, size, time, type and what it includes."""
        return await anyio.to_thread.run_sync(backup_deps.jobs.list)

    @post("/create", operation_id="createBackup", status_code=201, opt=NEEDS)
    async def create(
        self, data: JSONBody[CreateBackupRequest], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> ArchiveEntry:  # fmt: skip
        """Archive every stored event, the keys and the settings, encrypted; answers when it is written.
        400 without a passphrase (given or configured), 409 `BACKUP_BUSY` while another runs."""
        return await backup_deps.jobs.create(kind=data.type, actor=principal.actor, passphrase=data.passphrase,
                                             compression=data.compression)  # fmt: skip

    @get("/progress", operation_id="backupProgress", opt=NEEDS)
    async def progress(self, backup_deps: NamedDependency[BackupDeps]) -> Progress:
        """The backup or restore running in this process, or the last one, and how far it is."""
        return backup_deps.jobs.progress

    @get("/schedules", operation_id="listBackupSchedules", opt=NEEDS)
    async def schedules(self, backup_deps: NamedDependency[BackupDeps]) -> list[Schedule]:
        """Every backup schedule, with when it last fired."""
        return await backup_deps.schedules.all()

    @post("/schedules", operation_id="createBackupSchedule", status_code=201, opt=NEEDS)
    async def add_schedule(
        self, data: JSONBody[ScheduleRequest], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> Schedule:  # fmt: skip
        """Add a schedule; it is first due at the next moment its cron names. 400 `INVALID_SCHEDULE`."""
        return await backup_deps.schedules.add(data.spec(), actor=principal.actor)

    @put("/schedules/{schedule_id:uuid}", operation_id="updateBackupSchedule", opt=NEEDS)
    async def change_schedule(
        self, schedule_id: FromPath[UUID], data: JSONBody[ScheduleRequest], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> Schedule:  # fmt: skip
        """Replace a schedule's settings. 404 `BACKUP_SCHEDULE_NOT_FOUND`, 400 `INVALID_SCHEDULE`."""
        return await backup_deps.schedules.change(schedule_id, data.spec(), actor=principal.actor)

    @delete("/schedules/{schedule_id:uuid}", operation_id="deleteBackupSchedule", status_code=204, opt=NEEDS)
    async def remove_schedule(
        self, schedule_id: FromPath[UUID], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> None:  # fmt: skip
        """Remove a schedule (its archives stay). 404 `BACKUP_SCHEDULE_NOT_FOUND`."""
        await backup_deps.schedules.remove(schedule_id, actor=principal.actor)

    @get("/{filename:str}/download", operation_id="downloadBackup", opt=NEEDS)
    async def download(self, filename: FromPath[FileName], backup_deps: NamedDependency[BackupDeps]) -> File:
        """The archive file; 404 `BACKUP_NOT_FOUND` for any name that is not one of the listed archives."""
        path = backup_deps.jobs.file(filename)
        return File(path=path, filename=filename, media_type="application/octet-stream")

    @delete("/{filename:str}", operation_id="deleteBackup", status_code=204, opt=NEEDS)
    async def delete_backup(
        self, filename: FromPath[FileName], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> None:  # fmt: skip
        """Remove an archive; recorded with its actor. 404 `BACKUP_NOT_FOUND`."""
        await backup_deps.jobs.delete(filename, actor=principal.actor)

    @post("/restore", operation_id="restoreBackup", status_code=200, opt=NEEDS, request_max_body_size=None)
    async def restore(
        self, request: Request[Any, Any, Any], principal: NamedDependency[Principal],
        backup_deps: NamedDependency[BackupDeps],
    ) -> Response[RestoreOutcome]:  # fmt: skip
        """Restore an uploaded archive (`file`, with `passphrase` and `options` form fields) into a new database.

        The archive is checked whole first: 422 `BACKUP_REFUSED` for a wrong passphrase, an altered or
        truncated archive or a newer format, and nothing changes but the refusal's record in this log.
        Then the events and keys go into a database created for them (`options.database`, else
        `<this database>_restored_<time>`), every read model is replayed there and the hash chain verified.
        This server keeps running on its own database: restart it with `DATABASE_URL` naming the new one to
        switch over. 413 over `WATTLEDGER_MAX_UPLOAD_SIZE_MB`."""
        backup_deps.quarantine.mkdir(parents=True, exist_ok=True)
        upload = _Upload(backup_deps.quarantine / f"{uuid.uuid4().hex}.upload", backup_deps.max_upload_bytes)
        try:
            await upload.read(request)
            options = _options(upload.fields.get("options"))
            if not options.restore_database:
                raise InvalidRequest("only a restore of the database is possible: restore_database must be true")
            passphrase = backup_deps.jobs.need_passphrase(upload.fields.get("passphrase", b"").decode() or None)
            outcome = await backup_deps.jobs.restore_into_new_database(
                upload.path, passphrase, database=options.database, actor=principal.actor
            )
        finally:
            upload.path.unlink(missing_ok=True)
        return Response(outcome)


def _options(raw: bytes | None) -> RestoreOptions:
    if not raw:
        return RestoreOptions()
    try:
        return msgspec.json.decode(raw, type=RestoreOptions)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"options: {exc}") from None
