"""Compliance exports of the event history: the files, their manifest, and export jobs.

`export_events` streams the stored events that pass a filter, up to the newest
position at its start, into one JSON Lines, CSV or XLSX file (`events.<format>`) and
writes `manifest.json` beside it: the count, the first and last position and event
time, the filters, the head of the hash chain (the newest link at or before the last
position exported, and the newest link overall), and the SHA-256 and size of every
data file. It reads in one repeatable-read transaction, decoding a section of records
at a time, so memory stays flat for any number of events and the files agree with the
manifest even while new events arrive.

Every event is written in the public contract's form, the one `GET /api/events`
answers with: `position`, `originator_id`, `version`, `aggregate`, `type`,
`timestamp`, `actor` and `data` (a JSON object in JSON Lines, JSON text in a CSV or
XLSX cell).

`ComplianceFiles` is what the compliance export use case (`domain.compliance_jobs`) writes
through: the export run in a worker thread with its progress, and each job's directory under
the data directory with its state in `status.json`, so jobs of earlier runs are answered for too.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
import structlog

from adapters.export_files import FORMATS, open_writer, sha256_file
from domain.compliance import MANIFEST, ChainHeadEntry, ExportJob, FileEntry, Manifest
from domain.compliance_jobs import ComplianceJobs as _ComplianceJobs
from domain.export_ports import ComplianceProgress
from domain.ports import Clock
from adapters.eventstore import WattLedger
from adapters.history import EVENTS_TABLE, EventFilter, StoredRecord, decode_records, iter_records

log = structlog.get_logger(__name__)

__all__ = [
    "COLUMNS",
    "MANIFEST",
    "ChainLink",
    "ComplianceFiles",
    "ComplianceJobs",
    "ExportJob",
    "Manifest",
    "export_events",
]

COLUMNS: Final = ("position", "originator_id", "version", "aggregate", "type", "timestamp", "actor", "data")
STATUS: Final = "status.json"
_SECTION = 2000

ComplianceJobs = _ComplianceJobs[EventFilter]
"""The compliance export jobs (`domain.compliance_jobs`) over the stored events' filter."""
ChainLink = tuple[int, str]
"""A link of the hash chain: `(position, hex hash)`."""
HeadReader = Callable[[psycopg.Connection[Any], int | None], ChainLink | None]
"""Reads the chain's newest link (at or before a position, when given) on a connection."""


def _row(envelope: Any) -> tuple[Any, ...]:
    return (
        envelope.notification_id, envelope.originator_id, envelope.version, envelope.aggregate, envelope.event,
        envelope.timestamp, envelope.actor, envelope.data,
    )  # fmt: skip


def export_events(
    database_url: str,
    app: WattLedger,
    where: EventFilter,
    fmt: str,
    directory: Path,
    *,
    chain_head: HeadReader,
    progress: Callable[[int, int, int], None] | None = None,
    section: int = _SECTION,
    xlsx_max_rows: int | None = None,
    created_at: datetime | None = None,
) -> Manifest:
    """Export the events `where` selects into `directory`; returns the manifest it wrote.

    `progress(done, total, written)` is called after each section with the positions
    covered so far out of the range to cover, and the events written. Raises ValueError
    for an unknown format; a record that no longer decodes, or a failing disk, raises
    and leaves no data file behind (the `.part` file is removed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    directory.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"sheet": "events"}
    if xlsx_max_rows is not None:
        options["xlsx_max_rows"] = xlsx_max_rows
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            row = conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}").fetchone()
            stop = int(row[0]) if row else 0
            start = max(where.from_position - 1, 0)
            total = max(stop - start, 0)
            first: Any = None
            last: Any = None
            earliest: datetime | None = None
            latest: datetime | None = None
            with open_writer(fmt, directory, "events", COLUMNS, **options) as writer:
                pending: list[StoredRecord] = []

                def flush() -> None:
                    nonlocal first, last, earliest, latest
                    for envelope in decode_records(app, pending, where):
                        writer.write(_row(envelope))
                        if first is None:
                            first = envelope
                        last = envelope
                        moment = envelope.timestamp
                        earliest = moment if earliest is None or moment < earliest else earliest
                        latest = moment if latest is None or moment > latest else latest
                    if progress is not None and pending:
                        progress(pending[-1].notification_id - start, total, writer.rows)
                    pending.clear()

                for record in iter_records(conn, where, stop=stop, batch=section):
                    pending.append(record)
                    if len(pending) >= section:
                        flush()
                flush()
                count = writer.rows
                paths = writer.close()
            at_last = chain_head(conn, last.notification_id) if last is not None else None
        now = chain_head(conn, None)
    if progress is not None:
        progress(total, total, count)
    manifest = Manifest(
        format=fmt, count=count,
        first_position=first.notification_id if first else None, last_position=last.notification_id if last else None,
        first_timestamp=earliest, last_timestamp=latest,
        up_to_position=stop, filters=where.described(),
        chain_head=ChainHeadEntry(position=at_last[0], hash=at_last[1]) if at_last else None,
        chain_head_now=ChainHeadEntry(position=now[0], hash=now[1]) if now else None,
        files=[FileEntry(name=p.name, bytes=p.stat().st_size, sha256=sha256_file(p)) for p in paths],
        created_at=created_at or datetime.now(timezone.utc), columns=list(COLUMNS),
    )  # fmt: skip
    _write_json(directory / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    return manifest


def _write_json(path: Path, content: bytes) -> None:
    """Write a small JSON file whole: to a temporary name first, then renamed over the old one."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(content + b"\n")
    os.replace(part, path)


class ComplianceFiles:
    """The files of compliance exports: the history written into a directory in a worker thread (the exporter),
    and each job's directory under `root` with its `status.json` (the journal)."""

    def __init__(self, root: Path, database_url: str, app: WattLedger, chain_head: HeadReader, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.database_url = database_url
        self.app = app
        self.chain_head = chain_head

    async def export(self, where: EventFilter, fmt: str, directory: Path, progress: ComplianceProgress) -> Manifest:
        """`export_events` in a worker thread; `progress` is called on this event loop."""
        loop = asyncio.get_running_loop()

        def on_loop(done: int, total: int, written: int) -> None:
            loop.call_soon_threadsafe(progress, done, total, written)

        return await asyncio.to_thread(
            export_events, self.database_url, self.app, where, fmt, directory, chain_head=self.chain_head,
            progress=on_loop, created_at=self.clock.now(),
        )  # fmt: skip

    def directory(self, job_id: UUID) -> Path:
        return self.root / str(job_id)

    def create(self, job_id: UUID) -> None:
        self.directory(job_id).mkdir(parents=True, exist_ok=False)

    def save(self, job: ExportJob) -> None:
        try:
            _write_json(self.directory(job.id) / STATUS, msgspec.json.encode(job))
        except OSError as exc:
            log.warning("compliance.status_not_saved", job=str(job.id), error=str(exc))

    def load(self, job_id: UUID) -> ExportJob | None:
        try:
            return msgspec.json.decode((self.directory(job_id) / STATUS).read_bytes(), type=ExportJob)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
