"""The bodies the data export routes take and answer with, in the Kasa Monitor API's shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from domain.exports import DEFAULT_FIELDS, FormatInfo, MetricInfo

DeviceKey = Annotated[str, msgspec.Meta(min_length=1, max_length=261)]
FieldName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class DateRange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    start: datetime
    end: datetime


class ExportOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    include_headers: bool = True
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class CreateExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Device data to export: devices by address or id, [start, end), fields, aggregation, format."""

    export_type: Literal["device_data"] = "device_data"
    devices: Annotated[list[DeviceKey], msgspec.Meta(min_length=1, max_length=100)]
    date_range: DateRange
    format: Literal["csv", "json", "excel"] = "csv"
    fields: Annotated[list[FieldName], msgspec.Meta(max_length=20)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_FIELDS)
    )
    aggregation: Literal["raw", "hourly", "daily"] = "raw"
    options: ExportOptions = msgspec.field(default_factory=ExportOptions)


class ExportCreated(msgspec.Struct, frozen=True, kw_only=True):
    export_id: UUID
    status: str
    created_at: datetime
    user_id: UUID
    estimated_completion: datetime
    download_url: str


class ExportStatus(msgspec.Struct, frozen=True, kw_only=True):
    """An export as its status, history and stats show it; `download_url` only once its file is there."""

    export_id: UUID
    export_type: str
    format: str
    status: str
    progress: int
    created_at: datetime
    completed_at: datetime | None
    user_id: UUID
    username: str
    devices: list[UUID]
    aggregation: str
    timezone: str
    start: datetime
    end: datetime
    file_size: int | None
    record_count: int | None
    download_url: str | None
    retention_days: float
    expires_at: datetime | None
    error: str | None
    downloads: int


class ExportHistory(msgspec.Struct, frozen=True, kw_only=True):
    exports: list[ExportStatus]
    total: int
    page: int
    per_page: int


class ExportDeleted(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    export_id: UUID
    deleted_at: datetime


class ExportableDevice(msgspec.Struct, frozen=True, kw_only=True):
    device_id: UUID
    device_ip: str
    device_name: str
    device_type: str
    last_seen: datetime | None
    data_points: int


class FormatList(msgspec.Struct, frozen=True, kw_only=True):
    formats: list[FormatInfo]


class MetricList(msgspec.Struct, frozen=True, kw_only=True):
    metrics: list[MetricInfo]


class DeviceList(msgspec.Struct, frozen=True, kw_only=True):
    devices: list[ExportableDevice]


class Preview(msgspec.Struct, frozen=True, kw_only=True):
    preview: list[dict[str, Any]]
    total_records: int
    estimated_file_size: str


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    total_exports: int
    exports_this_month: int
    total_data_exported: str
    most_popular_format: str | None
    user_exports_remaining: int
