"""The data exports read model: one row per export with its status, and the queries of `/api/exports`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from adapters.data_exports import ExportCatalog
from domain.export_handlers import ExportLedger
from domain.exports import DataExport, DeviceLabel
from projections.devices import DEVICES
from projections.energy_queries import device_bucket_costs
from projections.quarantine import MEASUREMENTS
from projections.tables import Table


class ExportRow(msgspec.Struct, kw_only=True):
    """One row of `wl_read.data_exports`."""

    export_id: UUID
    owner_id: UUID
    owner: str
    export_type: str
    format: str
    devices: list[UUID]
    start_at: datetime
    end_at: datetime
    fields: list[str]
    aggregation: str
    timezone: str
    include_headers: bool
    status: str
    created_at: datetime
    completed_at: datetime | None = None
    file_name: str | None = None
    file_size: int | None = None
    record_count: int | None = None
    sha256: str | None = None
    expires_at: datetime | None = None
    error: str | None = None
    deleted_at: datetime | None = None
    downloads: int = 0
    last_download_at: datetime | None = None


EXPORTS = Table(
    "data_exports", ExportRow, key="export_id",
    indexes=("CREATE INDEX data_exports_owner_idx ON data_exports (owner_id, created_at)",),
)


def _stamp(event: object) -> datetime:
    moment: datetime = getattr(event, "timestamp")
    return moment


def fold(rows: dict[UUID, ExportRow], event: DataExport.Event) -> bool:
    """Fold one export event into its row; False if it changes nothing."""
    at = _stamp(event)
    if isinstance(event, DataExport.Requested):
        rows[event.originator_id] = ExportRow(
            export_id=event.originator_id, owner_id=event.owner_id, owner=event.owner,
            export_type=event.export_type, format=event.format, devices=list(event.devices), start_at=event.start,
            end_at=event.end, fields=list(event.fields), aggregation=event.aggregation, timezone=event.timezone,
            include_headers=event.include_headers, status="queued", created_at=at,
        )
        return True
    row = rows.get(event.originator_id)
    if row is None:
        return False
    match event:
        case DataExport.Completed():
            row.status, row.completed_at, row.file_name = "completed", at, event.file_name
            row.file_size, row.record_count, row.sha256 = event.file_size, event.record_count, event.sha256
            row.expires_at = event.expires_at
        case DataExport.Failed():
            row.status, row.completed_at, row.error = "failed", at, event.error
        case DataExport.Downloaded():
            row.downloads += 1
            row.last_download_at = at
        case DataExport.Deleted():
            row.status = "expired" if event.reason == "expired" else "deleted"
            row.deleted_at = at
        case _:
            return False
    return True


class ExportsProjector:
    """Projects DataExport events into `data_exports`."""

    name = "exports"
    ignores = MEASUREMENTS
    version = 1
    tables = (EXPORTS,)

    def apply_batch(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        ids = {e.originator_id for e in events if isinstance(e, DataExport.Event)}
        if not ids:
            return
        rows = EXPORTS.load(cur, ids)
        touched = {e.originator_id for e in events if isinstance(e, DataExport.Event) and fold(rows, e)}
        if touched:
            EXPORTS.write(cur, [EXPORTS.values(rows[i]) for i in sorted(touched)])


async def find_export(conn: psycopg.AsyncConnection[Any], export_id: UUID) -> ExportRow | None:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"{EXPORTS.select} WHERE export_id = %s", (export_id,))
        record = await cur.fetchone()
    return EXPORTS.decode(record) if record else None


async def export_history(
    conn: psycopg.AsyncConnection[Any], owner_id: UUID | None, *, limit: int, offset: int
) -> tuple[list[ExportRow], int]:
    """A page of exports, newest first, of one owner (or everyone's with None), and how many there are."""
    where, params = ("WHERE owner_id = %s", (owner_id,)) if owner_id is not None else ("", ())
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(f"SELECT count(*) FROM {EXPORTS.name} {where}", params)
        counted = await cur.fetchone()
        await cur.execute(
            f"{EXPORTS.select} {where} ORDER BY created_at DESC, export_id LIMIT %s OFFSET %s", (*params, limit, offset)
        )
        records = await cur.fetchall()
    return [EXPORTS.decode(r) for r in records], int(counted[0]) if counted else 0


class ExportStats(msgspec.Struct, frozen=True, kw_only=True):
    total_exports: int
    exports_this_month: int
    total_bytes: int
    most_popular_format: str | None


async def export_stats(
    conn: psycopg.AsyncConnection[Any], owner_id: UUID | None, month_start: datetime
) -> ExportStats:
    """Counts over one owner's exports (or everyone's with None)."""
    where, params = ("WHERE owner_id = %s", (owner_id,)) if owner_id is not None else ("", ())
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"SELECT count(*), count(*) FILTER (WHERE created_at >= %s), coalesce(sum(file_size), 0), "
            f"mode() WITHIN GROUP (ORDER BY format) FROM {EXPORTS.name} {where}",
            (month_start, *params),
        )
        row = await cur.fetchone()
    assert row is not None
    return ExportStats(total_exports=int(row[0]), exports_this_month=int(row[1]), total_bytes=int(row[2]),
                       most_popular_format=row[3])  # fmt: skip


async def exports_due(
    conn: psycopg.AsyncConnection[Any], now: datetime, queued_before: datetime
) -> tuple[list[UUID], list[UUID]]:
    """(exports queued before `queued_before`, oldest first; completed exports whose retention ended by `now`)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            f"SELECT export_id FROM {EXPORTS.name} WHERE status = 'queued' AND created_at < %s ORDER BY created_at",
            (queued_before,),
        )
        queued = [r[0] for r in await cur.fetchall()]
        await cur.execute(
            f"SELECT export_id FROM {EXPORTS.name} WHERE status = 'completed' AND expires_at <= %s", (now,)
        )
        expired = [r[0] for r in await cur.fetchall()]
    return queued, expired


class ExportReadModel(ExportLedger, ExportCatalog):
    """The `ExportLedger` and `ExportCatalog` ports over the read models."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        self.pool = pool

    async def requested_since(self, owner_id: UUID, since: datetime) -> list[datetime]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT created_at FROM {EXPORTS.name} WHERE owner_id = %s AND created_at >= %s ORDER BY created_at",
                (owner_id, since),
            )
            return [r[0] for r in await cur.fetchall()]

    async def labels(self, device_ids: list[UUID]) -> dict[UUID, DeviceLabel]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(f"{DEVICES.select} WHERE device_id = ANY(%s)", (device_ids,))
            rows = [DEVICES.decode(r) for r in await cur.fetchall()]
        return {r.device_id: DeviceLabel(device_id=r.device_id, address=r.address, name=r.alias, mac=r.mac)
                for r in rows}

    async def due(self, now: datetime, queued_before: datetime) -> tuple[list[UUID], list[UUID]]:
        async with self.pool.connection() as conn:
            return await exports_due(conn, now, queued_before)

    async def priced_buckets(self, device_id: UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
        async with self.pool.connection() as conn:
            return await device_bucket_costs(conn, device_id, start, end)
