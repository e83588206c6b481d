"""Compliance exports of the whole event history, as background jobs (administrators only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import File

from domain.compliance import MANIFEST, ExportJob, Manifest
from adapters.export_files import MEDIA_TYPES
from adapters.history import EventFilter
from api.controllers.events import as_utc
from api.deps import ExportDeps
from domain.errors import ComplianceExportNotFound, ComplianceExportNotReady
from domain.access import Permission, Principal

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ComplianceExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to export: the filters of `GET /api/events`, in one file of `format`."""

    format: Literal["jsonl", "csv", "xlsx"] = "jsonl"
    aggregate: Text | None = None
    originator_id: UUID | None = None
    event_type: Text | None = None
    actor: Text | None = None
    since: datetime | None = None
    until: datetime | None = None
    from_position: Annotated[int, msgspec.Meta(ge=1)] = 1


class ExportFileView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    bytes: int | None
    sha256: str | None
    url: str


class ComplianceExportView(msgspec.Struct, frozen=True, kw_only=True):
    """An export job: `status` pending, running, completed or failed; `progress` from 0 to 1.
    `files` (the data file and `manifest.json`) are there once completed."""

    id: UUID
    status: str
    format: str
    filters: dict[str, object]
    requested_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: float
    events_written: int
    error: str | None
    manifest: Manifest | None
    files: list[ExportFileView]

    @classmethod
    def of(cls, job: ExportJob) -> ComplianceExportView:
        base = f"/api/compliance/exports/{job.id}/files"
        files = []
        if job.manifest is not None:
            files = [ExportFileView(name=f.name, bytes=f.bytes, sha256=f.sha256, url=f"{base}/{f.name}")
                     for f in job.manifest.files]  # fmt: skip
            files.append(ExportFileView(name=MANIFEST, bytes=None, sha256=None, url=f"{base}/{MANIFEST}"))
        return cls(
            id=job.id, status=job.status, format=job.format, filters=job.filters, requested_by=job.requested_by,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            progress=job.progress, events_written=job.events_written, error=job.error, manifest=job.manifest,
            files=files,
        )  # fmt: skip


def _job(deps: ExportDeps, export_id: UUID) -> ExportJob:
    job = deps.compliance.get(export_id)
    if job is None:
        raise ComplianceExportNotFound(f"no compliance export {export_id}")
    return job


class ComplianceController(Controller):
    """Exports need SYSTEM_CONFIG and AUDIT_VIEW: administrators (or their `admin` keys)."""

    path = "/api/compliance/exports"
    tags = ["audit"]

    @post("/", operation_id="createComplianceExport", status_code=202, opt={"permission": Permission.SYSTEM_CONFIG})
    async def create(
        self,
        data: JSONBody[ComplianceExportRequest],
        principal: NamedDependency[Principal],
        export_deps: NamedDependency[ExportDeps],
    ) -> Response[ComplianceExportView]:
        """Start exporting the event history (filters as `GET /api/events`) as JSON Lines, CSV or XLSX,
        in the background: 202 with the job; follow `GET /api/compliance/exports/{id}` for progress.
        The export holds the events stored up to its start, with `manifest.json` (count, positions,
        time range, filters, hash chain head, SHA-256 of each file)."""
        principal.require(Permission.AUDIT_VIEW)
        where = EventFilter(
            aggregate=data.aggregate, originator_id=data.originator_id, event_type=data.event_type,
            actor=data.actor, since=as_utc(data.since), until=as_utc(data.until), from_position=data.from_position,
        )  # fmt: skip
        job = await export_deps.compliance.start(where, data.format, principal.actor)
        return Response(ComplianceExportView.of(job), status_code=202)

    @get("/{export_id:uuid}", operation_id="getComplianceExport", opt={"permission": Permission.SYSTEM_CONFIG})
    async def show(
        self, export_id: FromPath[UUID], principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps]
    ) -> ComplianceExportView:
        """An export job's status, progress and, once completed, its manifest and file links. 404 EXPORT_NOT_FOUND."""
        principal.require(Permission.AUDIT_VIEW)
        return ComplianceExportView.of(_job(export_deps, export_id))

    @get(
        "/{export_id:uuid}/files/{name:str}", operation_id="downloadComplianceExportFile",
        opt={"permission": Permission.SYSTEM_CONFIG},
    )  # fmt: skip
    async def download(
        self,
        export_id: FromPath[UUID],
        name: FromPath[str],
        principal: NamedDependency[Principal],
        export_deps: NamedDependency[ExportDeps],
    ) -> File:
        """One file of a completed export, streamed: the data file (`events.jsonl|csv|xlsx`) or
        `manifest.json`. 409 EXPORT_NOT_READY while it runs or after it failed; 404 for other names."""
        principal.require(Permission.AUDIT_VIEW)
        job = _job(export_deps, export_id)
        if job.status != "completed":
            raise ComplianceExportNotReady(f"the export is {job.status}")
        path = export_deps.compliance.file(export_id, name)
        if path is None or not path.is_file():
            raise ComplianceExportNotFound(f"the export has no file {name!r}")
        media = "application/json" if name == MANIFEST else MEDIA_TYPES.get(job.format, "application/octet-stream")
        return File(path=path, filename=name, media_type=media)
