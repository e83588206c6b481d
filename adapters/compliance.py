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

`ComplianceJobs` runs exports in the background of an API process (each in a worker
thread) with progress, keeps each job's state in `status.json` in its directory
under the data directory, and so answers for jobs of earlier runs as well.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
import psycopg
import structlog

from adapters.faults import DATABASE_FAULTS, describe, report
from adapters.export_files import FORMATS, ExportFormat, open_writer, sha256_file
from domain.compliance import ExportSummary
from domain.compliance_handlers import ComplianceHandlers
from adapters.eventstore import WattLedger
from adapters.history import EVENTS_TABLE, EventFilter, StoredRecord, decode_records, iter_records

log = structlog.get_logger(__name__)

__all__ = [
    "COLUMNS",
    "ChainLink",
    "ComplianceJobs",
    "ExportJob",
    "Manifest",
    "export_events",
]

SYSTEM_ACTOR: Final = "system:compliance"
"""The actor of an export's outcome when a background job records it."""
COLUMNS: Final = ("position", "originator_id", "version", "aggregate", "type", "timestamp", "actor", "data")
MANIFEST: Final = "manifest.json"
STATUS: Final = "status.json"
_SECTION = 2000

ChainLink = tuple[int, str]
"""A link of the hash chain: `(position, hex hash)`."""
HeadReader = Callable[[psycopg.Connection[Any], int | None], ChainLink | None]
"""Reads the chain's newest link (at or before a position, when given) on a connection."""


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    bytes: int
    sha256: str


class ChainHeadEntry(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    hash: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What an export holds and how to check it (written as `manifest.json`)."""

    format: str
    count: int
    first_position: int | None
    last_position: int | None
    first_timestamp: datetime | None
    """The earliest event time among the events exported (times need not rise with positions)."""
    last_timestamp: datetime | None
    """The latest event time among them."""
    up_to_position: int
    """The newest position in the store when the export began: nothing after it is included."""
    filters: dict[str, Any]
    chain_head: ChainHeadEntry | None
    """The newest chain link at or before `last_position`: the history up to there must lead to it."""
    chain_head_now: ChainHeadEntry | None
    """The chain's newest link when the export ended."""
    files: list[FileEntry]
    created_at: datetime
    columns: list[str]


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
        created_at=datetime.now(timezone.utc), columns=list(COLUMNS),
    )  # fmt: skip
    _write_json(directory / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest), indent=2))
    return manifest


def summary_of(manifest: Manifest) -> ExportSummary:
    """What the log records about a finished export."""
    head = manifest.chain_head
    return ExportSummary(
        count=manifest.count, first_position=manifest.first_position, last_position=manifest.last_position,
        chain_position=head.position if head else None, chain_hash=head.hash if head else None,
        files={f.name: f.sha256 for f in manifest.files},
    )  # fmt: skip


def _write_json(path: Path, content: bytes) -> None:
    """Write a small JSON file whole: to a temporary name first, then renamed over the old one."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(content + b"\n")
    os.replace(part, path)


JobStatus = Literal["pending", "running", "completed", "failed"]


class ExportJob(msgspec.Struct, kw_only=True):
    """An export job as `status.json` holds it; `progress` runs from 0 to 1."""

    id: UUID
    status: JobStatus
    format: str
    filters: dict[str, Any]
    requested_by: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    events_written: int = 0
    error: str | None = None
    manifest: Manifest | None = None


class ComplianceJobs:
    """Export jobs of one API process: each runs in a worker thread; state lives on disk.

    A job's directory is `<root>/<job id>/`: its data file, `manifest.json` once done,
    and `status.json` throughout. A job still `running` in `status.json` whose process is
    gone (found on `get` with no task here) is reported `failed`.
    """

    def __init__(
        self, root: Path, database_url: str, app: WattLedger, chain_head: HeadReader, handlers: ComplianceHandlers
    ) -> None:
        self.root = root
        self.handlers = handlers
        self.database_url = database_url
        self.app = app
        self.chain_head = chain_head
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._jobs: dict[UUID, ExportJob] = {}

    def directory(self, job_id: UUID) -> Path:
        return self.root / str(job_id)

    async def start(self, where: EventFilter, fmt: ExportFormat, requested_by: str) -> ExportJob:
        """Record the request in the log, then start the job in the background; returns its first state
        (`pending`). Raises what the store raises when the request cannot be recorded (nothing starts)."""
        job = ExportJob(
            id=uuid.uuid4(), status="pending", format=fmt, filters=where.described(), requested_by=requested_by,
            created_at=datetime.now(timezone.utc),
        )  # fmt: skip
        await self.handlers.request(job.id, format=fmt, filters=job.filters, actor=requested_by)
        self.directory(job.id).mkdir(parents=True, exist_ok=False)
        self._save(job)
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._run(job, where), name=f"compliance-export-{job.id}")
        return job

    def get(self, job_id: UUID) -> ExportJob | None:
        """A job of this process or, from its `status.json`, of an earlier one; None if unknown."""
        if (job := self._jobs.get(job_id)) is not None:
            return job
        path = self.directory(job_id) / STATUS
        try:
            job = msgspec.json.decode(path.read_bytes(), type=ExportJob)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if job.status in ("pending", "running"):
            job.status, job.error = "failed", "the process running this export stopped before it finished"
        return job

    def file(self, job_id: UUID, name: str) -> Path | None:
        """A file of a completed job by name (a data file or `manifest.json`); None for any other name."""
        job = self.get(job_id)
        if job is None or job.manifest is None:
            return None
        names = {f.name for f in job.manifest.files} | {MANIFEST}
        return self.directory(job_id) / name if name in names else None

    async def _run(self, job: ExportJob, where: EventFilter) -> None:
        loop = asyncio.get_running_loop()
        job.status, job.started_at = "running", datetime.now(timezone.utc)
        self._save(job)

        def progress(done: int, total: int, written: int) -> None:
            job.progress = round(done / total, 4) if total else 1.0
            job.events_written = written
            loop.call_soon_threadsafe(self._save, job)

        try:
            job.manifest = await asyncio.to_thread(
                export_events, self.database_url, self.app, where, job.format, self.directory(job.id),
                chain_head=self.chain_head, progress=progress,
            )  # fmt: skip
            await self.handlers.complete(job.id, summary_of(job.manifest), actor=SYSTEM_ACTOR)
            job.status, job.progress, job.events_written = "completed", 1.0, job.manifest.count
        except Exception as exc:
            if isinstance(exc, DATABASE_FAULTS):
                report("compliance", exc, job=str(job.id))  # an outage, not a bug: no traceback
            else:
                log.exception("compliance.export_failed", job=str(job.id))
            job.status, job.error = "failed", describe(exc)[:500]
            await self._record_failure(job)
        finally:
            job.finished_at = datetime.now(timezone.utc)
            self._save(job)
            self._tasks.pop(job.id, None)

    async def _record_failure(self, job: ExportJob) -> None:
        """Record the failure in the log; if even that fails, the status file still says it."""
        try:
            await self.handlers.fail(job.id, job.error or "failed", actor=SYSTEM_ACTOR)
        except Exception as exc:
            log.warning("compliance.failure_not_recorded", job=str(job.id), error=repr(exc))

    @property
    def running(self) -> int:
        return len(self._tasks)

    def _save(self, job: ExportJob) -> None:
        try:
            _write_json(self.directory(job.id) / STATUS, msgspec.json.encode(job))
        except OSError as exc:
            log.warning("compliance.status_not_saved", job=str(job.id), error=str(exc))

    async def aclose(self) -> None:
        """Cancel the jobs still running (their worker threads finish the section they are in)."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


