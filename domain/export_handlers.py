"""The data export use cases: request (within the hourly allowance), settle, download, delete, expire.

Works over ports only: the event store and an `ExportLedger` that counts a
user's recent requests (the exports read model). Every change is an event of
the `DataExport` aggregate with its actor; the job that writes the file and
the retention sweep act as `system:exports`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from domain.commands import Stored
from domain.errors import (
    DataExportAccessDenied,
    DataExportLimit,
    DataExportNotFound,
    DataExportNotReady,
    InvalidExport,
)
from domain.exports import METRIC_FIELDS, DataExport, ExportSpec
from domain.access import Principal, Role
from domain.ports import Clock, EventStore

SYSTEM_ACTOR = "system:exports"
WINDOW = timedelta(hours=1)


class ExportLedger(Protocol):
    """What the exports read model knows about a user's recent requests."""

    async def requested_since(self, owner_id: UUID, since: datetime) -> list[datetime]:
        """When the user requested exports at or after `since`, oldest first."""
        ...


class ExportRequested(msgspec.Struct, frozen=True, kw_only=True):
    export_id: UUID
    created_at: datetime
    position: int


def check_spec(spec: ExportSpec) -> None:
    """Raises InvalidExport naming what is wrong: no device, an empty range, an unknown field or zone, an option
    the format would not use. Any range from 2000 on may be exported: the job streams it in constant memory."""
    if not spec.devices:
        raise InvalidExport("devices: name at least one device")
    if spec.start.tzinfo is None or spec.end.tzinfo is None:
        raise InvalidExport("date_range: start and end must name their UTC offset (e.g. Z)")
    if not (2000 <= spec.start.year and spec.end.year <= 9000):
        raise InvalidExport("date_range: from the year 2000 to 9000")
    if spec.end <= spec.start:
        raise InvalidExport("date_range: end must be after start")
    unknown = [f for f in spec.fields if f != "timestamp" and f not in METRIC_FIELDS]
    if unknown:
        raise InvalidExport(f"fields: unknown {', '.join(unknown)}; see GET /api/exports/metrics")
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidExport(f"timezone {spec.timezone!r} is not an IANA time zone") from None
    if not spec.include_headers and spec.format != "csv":
        raise InvalidExport(f"options.include_headers: only a csv file can leave out its header row, not {spec.format}")


def may_access(principal: Principal, export: DataExport) -> bool:
    """The owner and admins may see, download and delete an export."""
    return principal.user_id == export.owner_id or principal.role is Role.ADMIN


class ExportHandlers:
    """Data export commands over the event store; `limit` exports per user per hour."""

    def __init__(self, store: EventStore, ledger: ExportLedger, clock: Clock, *, limit: int = 10) -> None:
        self.store = store
        self.ledger = ledger
        self.clock = clock
        self.limit = limit

    async def remaining(self, owner_id: UUID) -> tuple[int, datetime | None]:
        """Exports the user may still request this hour, and when the next one frees up (None: not at the limit)."""
        now = self.clock.now()
        recent = await self.ledger.requested_since(owner_id, now - WINDOW)
        left = max(self.limit - len(recent), 0)
        return left, (recent[len(recent) - self.limit] + WINDOW if left == 0 and recent else None)

    async def request(self, principal: Principal, spec: ExportSpec) -> ExportRequested:
        """Record an export request. Raises InvalidExport for a bad spec, DataExportLimit at the hourly limit."""
        check_spec(spec)
        left, free_at = await self.remaining(principal.user_id)
        if left == 0:
            raise DataExportLimit(
                f"at most {self.limit} exports per hour", limit=self.limit, retry_after=free_at or self.clock.now()
            )
        export = DataExport.request(spec, owner_id=principal.user_id, owner=principal.username,
                                    actor=principal.actor)  # fmt: skip
        position = await self.store.save(export)
        return ExportRequested(export_id=export.id, created_at=export.created_on, position=position)

    async def find(self, principal: Principal, export_id: UUID) -> DataExport:
        """The export, if the principal may access it. Raises DataExportNotFound or DataExportAccessDenied."""
        export = await self.store.aggregate(export_id, DataExport)
        if export is None:
            raise DataExportNotFound(f"no export {export_id}")
        if not may_access(principal, export):
            raise DataExportAccessDenied("You don't have access to this export", owner=export.owner)
        return export

    async def downloaded(self, principal: Principal, export_id: UUID) -> tuple[DataExport, Stored]:
        """Record a download. Raises like `find`, DataExportGone once deleted or expired, and
        DataExportNotReady unless the file was written."""
        export = await self.find(principal, export_id)
        export.check_present()
        if export.status != "completed":
            raise DataExportNotReady(f"export {export_id} is {export.status}; there is no file to download")
        export.downloaded(actor=principal.actor)
        return export, Stored(position=await self.store.save(export))

    async def delete(self, principal: Principal, export_id: UUID) -> Stored:
        """Delete an export (its file goes with the sweep). Raises like `find`, and DataExportGone if already gone."""
        export = await self.find(principal, export_id)
        export.delete(reason="deleted", actor=principal.actor)
        return Stored(position=await self.store.save(export))

    async def settle(
        self, export_id: UUID, *, outcome: Literal["completed", "failed"], error: str = "", file_name: str = "",
        file_size: int = 0, record_count: int = 0, sha256: str = "", retention: timedelta = timedelta(days=7),
    ) -> Stored:
        """Record the job's outcome; nothing if the export is unknown or was deleted meanwhile."""
        export = await self.store.aggregate(export_id, DataExport)
        if export is None:
            return Stored(position=0)
        if outcome == "completed":
            export.complete(file_name=file_name, file_size=file_size, record_count=record_count, sha256=sha256,
                            expires_at=self.clock.now() + retention, actor=SYSTEM_ACTOR)  # fmt: skip
        else:
            export.fail(error, actor=SYSTEM_ACTOR)
        return Stored(position=await self.store.save(export))

    async def expire(self, export_id: UUID) -> Stored:
        """Record that retention removed the export's file; nothing if it is gone already."""
        export = await self.store.aggregate(export_id, DataExport)
        if export is None or export.status in ("deleted", "expired"):
            return Stored(position=0)
        export.delete(reason="expired", actor=SYSTEM_ACTOR)
        return Stored(position=await self.store.save(export))
