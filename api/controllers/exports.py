"""Data exports of device readings (`/api/exports/...`), as the Kasa Monitor API has them.

Every route needs `DATA_EXPORT`. A user sees, downloads and deletes only their
own exports, admins everyone's; another user's export answers 403
`ACCESS_DENIED`, which does not say whose it is. A user may request `WATTLEDGER_EXPORTS_PER_HOUR`
exports per hour (429 with `retry_after`). Requests, completions, failures,
downloads and deletions are events of the `DataExport` aggregate with their actor.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

import anyio.to_thread
import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import File

from adapters.data_exports import EXTENSION, blocking_prices, export_rows, readings_stored
from domain.export_jobs import DataExportJobs
from api.controllers.devices import resolve_device
from api.controllers.export_schemas import (
    CreateExportRequest,
    DeviceList,
    ExportCreated,
    ExportDeleted,
    ExportHistory,
    ExportStatus,
    ExportableDevice,
    FormatList,
    MetricList,
    Preview,
    Stats,
)
from api.deps import ExportDeps
from domain.errors import (
    DataExportAccessDenied,
    DataExportLimit,
    DataExportNotFound,
    DataExportNotReady,
    InvalidExport,
)
from domain.export_handlers import check_spec
from domain.exports import (
    DEFAULT_FIELDS,
    FORMAT_BY_ID,
    FORMATS,
    METRICS,
    Aggregation,
    DeviceLabel,
    ExportSpec,
    Format,
)
from domain.access import Permission, Principal, Role
from projections.devices import list_devices
from projections.exports import ExportReadModel, ExportRow, export_history, export_stats, find_export

NEEDS = {"permission": Permission.DATA_EXPORT}
PREVIEW_RANGE = timedelta(days=1)
PREVIEW_MAX_RANGE = timedelta(days=366)
"""The preview reads every reading of its range within the request to count the rows; an export has no cap."""
DATA_POINTS_SPAN = timedelta(days=366)


def human_size(size: int) -> str:
    """`2.1 MB`: bytes in the largest binary unit that keeps the number at least 1."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def _access_denied(request: Request[Any, Any, Any], exc: DataExportAccessDenied) -> Response[Any]:
    body = {"detail": "Access denied to export", "status_code": 403, "error_code": "ACCESS_DENIED",
            "message": "You don't have access to this export"}  # fmt: skip
    return Response(body, status_code=403, media_type="application/json")


def _limited(request: Request[Any, Any, Any], exc: DataExportLimit) -> Response[Any]:
    seconds = max(int((exc.retry_after - datetime.now(timezone.utc)).total_seconds()) + 1, 1)
    body = {
        "detail": "Export rate limit exceeded", "status_code": 429, "error_code": "RATE_LIMIT_EXCEEDED",
        "message": "Export rate limit exceeded. Please try again later.", "limit": f"{exc.limit} per hour",
        "retry_after": exc.retry_after.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    return Response(body, status_code=429, media_type="application/json", headers={"Retry-After": str(seconds)})


def _export_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise DataExportNotFound(f"no export {text!r}") from None


def _status(row: ExportRow, jobs: DataExportJobs) -> ExportStatus:
    status, progress = row.status, 100 if row.status == "completed" else 0
    if row.status == "queued" and row.export_id in jobs.progress:
        status, progress = "processing", int(jobs.progress[row.export_id] * 100)
    return ExportStatus(
        export_id=row.export_id, export_type=row.export_type, format=row.format, status=status, progress=progress,
        created_at=row.created_at, completed_at=row.completed_at, user_id=row.owner_id, username=row.owner,
        devices=row.devices, aggregation=row.aggregation, timezone=row.timezone, start=row.start_at,
        end=row.end_at, file_size=row.file_size, record_count=row.record_count,
        download_url=f"/api/exports/download/{row.export_id}" if row.status == "completed" else None,
        retention_days=jobs.retention / timedelta(days=1), expires_at=row.expires_at, error=row.error,
        downloads=row.downloads,
    )


async def _own_row(deps: ExportDeps, principal: Principal, export_id: UUID) -> ExportRow:
    """The export's row if the principal may see it; DataExportNotFound or DataExportAccessDenied otherwise."""
    async with deps.reads.pool.connection() as conn:
        row = await find_export(conn, export_id)
    if row is None:
        raise DataExportNotFound(f"no export {export_id}")
    if not (row.owner_id == principal.user_id or principal.role is Role.ADMIN):
        raise DataExportAccessDenied("You don't have access to this export", owner=row.owner)
    return row


async def _spec(deps: ExportDeps, devices: list[str], start: datetime, end: datetime, fields: list[str],
                aggregation: str, fmt: str, zone: str | None, headers: bool) -> tuple[ExportSpec, list[DeviceLabel]]:
    """The export spec with devices resolved (404 `DEVICE_NOT_FOUND` for one not there); checked."""
    views = [await resolve_device(deps.reads, key) for key in devices]
    labels = list({v.device_id: DeviceLabel(device_id=v.device_id, address=v.device_ip, name=v.alias, mac=v.mac)
                   for v in views}.values())  # fmt: skip
    spec = ExportSpec(
        devices=tuple(label.device_id for label in labels), start=start, end=end,
        fields=tuple(fields) or DEFAULT_FIELDS, aggregation=msgspec.convert(aggregation, Aggregation),
        timezone=zone or deps.reads.zone.key, format=msgspec.convert(fmt, Format),
        include_headers=headers,
    )
    check_spec(spec)
    return spec, labels


class ExportsController(Controller):
    path = "/api/exports"
    tags = ["exports"]
    exception_handlers = {DataExportAccessDenied: _access_denied, DataExportLimit: _limited}

    @get("/formats", operation_id="listExportFormats", opt=NEEDS)
    async def formats(self) -> FormatList:
        """The file formats an export can have."""
        return FormatList(formats=list(FORMATS))

    @get("/metrics", operation_id="listExportMetrics", opt=NEEDS)
    async def metrics(self) -> MetricList:
        """The fields an export row can carry besides `timestamp`, `device_ip` and `device_name`."""
        return MetricList(metrics=list(METRICS))

    @get("/devices", operation_id="listExportDevices", opt=NEEDS)
    async def devices(self, export_deps: NamedDependency[ExportDeps]) -> DeviceList:
        """Every present device with the readings stored for it over the last 366 days (`data_points`)."""
        async with export_deps.reads.pool.connection() as conn:
            views = await list_devices(conn, export_deps.reads.zone, export_deps.reads.clock.now())
            now = export_deps.clock.now()
            counts = [await readings_stored(conn, export_deps.store, v.device_id, now - DATA_POINTS_SPAN, now)
                      for v in views]  # fmt: skip
        return DeviceList(devices=[
            ExportableDevice(device_id=v.device_id, device_ip=v.device_ip, device_name=v.alias,
                             device_type=v.device_type, last_seen=v.last_seen, data_points=n)
            for v, n in zip(views, counts, strict=True)
        ])  # fmt: skip

    @post("/create", operation_id="createExport", status_code=201, opt=NEEDS)
    async def create(
        self, data: JSONBody[CreateExportRequest], principal: NamedDependency[Principal],
        export_deps: NamedDependency[ExportDeps],
    ) -> ExportCreated:
        """Queue an export of device data; its file is written in the background (see `GET /api/exports/{id}`).
        400 `INVALID_EXPORT` for a bad range, field or zone, 404 `DEVICE_NOT_FOUND`, 429 past the hourly limit."""
        jobs = export_deps.exports
        spec, _ = await _spec(
            export_deps, data.devices, data.date_range.start, data.date_range.end, data.fields, data.aggregation,
            data.format, data.options.timezone, data.options.include_headers,
        )
        requested = await jobs.handlers.request(principal, spec)
        await export_deps.reads.wait_projected(requested.position, projector="exports")
        jobs.start(requested.export_id)
        return ExportCreated(
            export_id=requested.export_id, status="queued", created_at=requested.created_at,
            user_id=principal.user_id, estimated_completion=requested.created_at + timedelta(seconds=30),
            download_url=f"/api/exports/download/{requested.export_id}",
        )

    @get("/history", operation_id="listExports", opt=NEEDS)
    async def history(
        self, principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=1_000_000)] = 0,
    ) -> ExportHistory:
        """The caller's exports, newest first (an admin's list holds everyone's)."""
        jobs = export_deps.exports
        owner = None if principal.role is Role.ADMIN else principal.user_id
        async with export_deps.reads.pool.connection() as conn:
            rows, total = await export_history(conn, owner, limit=limit, offset=offset)
        return ExportHistory(exports=[_status(r, jobs) for r in rows], total=total, page=offset // limit + 1,
                             per_page=limit)  # fmt: skip

    @get("/stats", operation_id="exportStats", opt=NEEDS)
    async def stats(self, principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps]) -> Stats:
        """Counts over the caller's exports (everyone's for an admin) and the caller's exports left this hour."""
        jobs = export_deps.exports
        owner = None if principal.role is Role.ADMIN else principal.user_id
        local = export_deps.clock.now().astimezone(export_deps.reads.zone)
        month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        async with export_deps.reads.pool.connection() as conn:
            counted = await export_stats(conn, owner, month_start)
        remaining, _ = await jobs.handlers.remaining(principal.user_id)
        return Stats(
            total_exports=counted.total_exports, exports_this_month=counted.exports_this_month,
            total_data_exported=human_size(counted.total_bytes), most_popular_format=counted.most_popular_format,
            user_exports_remaining=remaining,
        )

    @get("/preview", operation_id="previewExport", opt=NEEDS)
    async def preview(
        self, export_deps: NamedDependency[ExportDeps],
        devices: Annotated[str, QueryParameter(min_length=1, max_length=2000, description="comma-separated")],
        export_type: FromQuery[Literal["device_data"]] = "device_data",
        aggregation: FromQuery[Literal["raw", "hourly", "daily"]] = "raw",
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        fields: Annotated[str | None, QueryParameter(max_length=500, description="comma-separated")] = None,
        timezone_name: Annotated[str | None, QueryParameter(name="timezone", max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 5,
    ) -> Preview:
        """The first rows an export with these parameters would hold (the last day unless `start`/`end` say
        otherwise, at most 366 days), how many there would be and about how large a CSV of them is. Rows
        carry `cost` unless `fields` says otherwise: hourly and daily rows priced by the energy read
        model, raw rows null."""
        now = export_deps.clock.now()
        until = end or now
        if not 2000 <= until.year <= 9000:
            raise InvalidExport("end: from the year 2000 to 9000")
        since = start or until - PREVIEW_RANGE
        if until - since > PREVIEW_MAX_RANGE:
            raise InvalidExport("start, end: a preview covers at most 366 days; an export may cover any range")
        spec, labels = await _spec(
            export_deps, [d.strip() for d in devices.split(",") if d.strip()][:100], since, until,
            [f.strip() for f in (fields or "").split(",") if f.strip()], aggregation, "csv", timezone_name, True,
        )
        rules = export_deps.energy_rules
        priced = None
        if "cost" in spec.fields and spec.aggregation != "raw":
            priced = blocking_prices(ExportReadModel(export_deps.reads.pool))

        def shape() -> tuple[list[list[Any]], int, int]:
            kept: list[list[Any]] = []
            total = size = 0
            named = {label.device_id: label for label in labels}
            for row in export_rows(export_deps.store, spec, named, rules, now=now, priced=priced):
                total += 1
                size += len(",".join("" if v is None else str(v) for v in row)) + 2
                if len(kept) < limit:
                    kept.append(row)
            return kept, total, size

        rows, total, size = await anyio.to_thread.run_sync(shape)
        columns = spec.columns()
        return Preview(preview=[dict(zip(columns, row, strict=True)) for row in rows], total_records=total,
                       estimated_file_size=human_size(size + len(",".join(columns)) + 2))  # fmt: skip

    @get("/download/{export_id:str}", operation_id="downloadExport", opt=NEEDS)
    async def download(
        self, export_id: FromPath[str], principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps],
    ) -> File:
        """The export's file. 403 `ACCESS_DENIED` for another user's, 409 `DATA_EXPORT_NOT_READY` while it is
        written or after it failed, `DATA_EXPORT_GONE` once deleted or expired."""
        jobs = export_deps.exports
        export, _ = await jobs.handlers.downloaded(principal, _export_id(export_id))
        path = jobs.path_of(export.file_name or "")
        if not export.file_name or not path.is_file():
            raise DataExportNotReady(f"the file of export {export_id} is not there")
        export_deps.reads.on_saved()
        info = FORMAT_BY_ID[export.spec.format]
        return File(path=path, filename=f"export_{export.id}{EXTENSION[export.spec.format]}",
                    media_type=info.mime_type)  # fmt: skip

    @get("/{export_id:str}", operation_id="getExport", opt=NEEDS)
    async def status(
        self, export_id: FromPath[str], principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps],
    ) -> ExportStatus:
        """An export's status with its progress (0 to 100). 403 `ACCESS_DENIED` for another user's."""
        return _status(await _own_row(export_deps, principal, _export_id(export_id)), export_deps.exports)

    @delete("/{export_id:str}", operation_id="deleteExport", status_code=200, opt=NEEDS)
    async def remove(
        self, export_id: FromPath[str], principal: NamedDependency[Principal], export_deps: NamedDependency[ExportDeps],
    ) -> ExportDeleted:
        """Delete an export and its file. 403 `ACCESS_DENIED` for another user's, 409 `DATA_EXPORT_GONE` if
        it was deleted or expired already."""
        jobs = export_deps.exports
        key = _export_id(export_id)
        row = await _own_row(export_deps, principal, key)
        stored = await jobs.handlers.delete(principal, key)
        jobs.remove_file(row.file_name)
        await export_deps.reads.wait_projected(stored.position, projector="exports")
        return ExportDeleted(message="Export deleted successfully", export_id=key,
                             deleted_at=export_deps.clock.now())  # fmt: skip

