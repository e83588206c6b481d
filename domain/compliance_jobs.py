"""The compliance export use case: record the request, export the history, record how it ended.

`ComplianceExports.carry_out` is the one flow every entry point runs: the API's
background jobs (`ComplianceJobs`) and `wattledger export events`. The log records the
request before any file is written, then the export's summary (count, positions, chain
head, each file's SHA-256) or its failure. Works over ports only (`domain.export_ports`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Final, Generic, TypeVar
from uuid import UUID

from domain.compliance import MANIFEST, ExportJob, Manifest
from domain.compliance_handlers import ComplianceHandlers
from domain.export_ports import Background, ComplianceProgress, EventSelection, HistoryExporter, JobJournal, JobNotes
from domain.ports import Clock

SYSTEM_ACTOR: Final = "system:compliance"
"""The actor of an export's outcome when a background job records it."""
GONE: Final = "the process running this export stopped before it finished"

W = TypeVar("W", bound=EventSelection)


class ComplianceExports(Generic[W]):
    """Exports of the history between the log's record of their request and of their outcome."""

    def __init__(self, handlers: ComplianceHandlers, exporter: HistoryExporter[W], notes: JobNotes) -> None:
        self.handlers = handlers
        self.exporter = exporter
        self.notes = notes

    async def request(self, export_id: UUID, where: W, fmt: str, *, actor: str) -> None:
        """Record the request. Raises InvalidRequest, InvalidText, or what the store raises."""
        await self.handlers.request(export_id, format=fmt, filters=where.described(), actor=actor)

    async def carry_out(
        self, export_id: UUID, where: W, fmt: str, directory: Path, *, actor: str,
        progress: ComplianceProgress = lambda done, total, written: None,
    ) -> Manifest:
        """Export what `where` selects into `directory` and record the summary as `actor`. A failure is noted and
        recorded (if the log takes it), then raised."""
        try:
            manifest = await self.exporter.export(where, fmt, directory, progress)
            await self.handlers.complete(export_id, manifest.summary(), actor=actor)
        except Exception as exc:
            self.notes.fault(exc, "compliance.export_failed", job=str(export_id))
            await self._record_failure(export_id, self.notes.describe(exc), actor=actor)
            raise
        return manifest

    async def export(
        self, where: W, fmt: str, directory: Path, *, actor: str,
        progress: ComplianceProgress = lambda done, total, written: None,
    ) -> Manifest:
        """Request and carry out one export at once, as `actor` throughout."""
        export_id = uuid.uuid4()
        await self.request(export_id, where, fmt, actor=actor)
        return await self.carry_out(export_id, where, fmt, directory, actor=actor, progress=progress)

    async def _record_failure(self, export_id: UUID, reason: str, *, actor: str) -> None:
        """Record the failure in the log; if even that fails, it is noted."""
        try:
            await self.handlers.fail(export_id, reason or "failed", actor=actor)
        except Exception as exc:
            self.notes.warning("compliance.failure_not_recorded", job=str(export_id), error=repr(exc))


class ComplianceJobs(Generic[W]):
    """Export jobs of one API process, each run in the background; their state is kept by the journal.

    A job's directory holds its data file, `manifest.json` once done, and its state throughout.
    A job still pending or running in the journal with no work here (its process is gone) is
    reported failed.
    """

    def __init__(
        self, exports: ComplianceExports[W], journal: JobJournal, background: Background, clock: Clock
    ) -> None:
        self.exports = exports
        self.journal = journal
        self.background = background
        self.clock = clock
        self._jobs: dict[UUID, ExportJob] = {}

    def directory(self, job_id: UUID) -> Path:
        return self.journal.directory(job_id)

    async def start(self, where: W, fmt: str, requested_by: str) -> ExportJob:
        """Record the request in the log, then start the job in the background; returns its first state
        (`pending`). Raises what the store raises when the request cannot be recorded (nothing starts)."""
        job = ExportJob(
            id=uuid.uuid4(), status="pending", format=fmt, filters=where.described(), requested_by=requested_by,
            created_at=self.clock.now(),
        )  # fmt: skip
        await self.exports.request(job.id, where, fmt, actor=requested_by)
        self.journal.create(job.id)
        self.journal.save(job)
        self._jobs[job.id] = job
        self.background.spawn(job.id, lambda: self._run(job, where))
        return job

    def get(self, job_id: UUID) -> ExportJob | None:
        """A job of this process or, from the journal, of an earlier one; None if unknown."""
        if (job := self._jobs.get(job_id)) is not None:
            return job
        job = self.journal.load(job_id)
        if job is not None and job.status in ("pending", "running"):
            job.status, job.error = "failed", GONE
        return job

    def file(self, job_id: UUID, name: str) -> Path | None:
        """A file of a completed job by name (a data file or `manifest.json`); None for any other name."""
        job = self.get(job_id)
        if job is None or job.manifest is None:
            return None
        names = {f.name for f in job.manifest.files} | {MANIFEST}
        return self.directory(job_id) / name if name in names else None

    async def _run(self, job: ExportJob, where: W) -> None:
        job.status, job.started_at = "running", self.clock.now()
        self.journal.save(job)

        def progress(done: int, total: int, written: int) -> None:
            job.progress = round(done / total, 4) if total else 1.0
            job.events_written = written
            self.journal.save(job)

        try:
            job.manifest = await self.exports.carry_out(
                job.id, where, job.format, self.directory(job.id), actor=SYSTEM_ACTOR, progress=progress
            )
            job.status, job.progress, job.events_written = "completed", 1.0, job.manifest.count
        except Exception as exc:
            job.status, job.error = "failed", self.exports.notes.describe(exc)[:500]
        finally:
            job.finished_at = self.clock.now()
            self.journal.save(job)

    @property
    def running(self) -> int:
        return len(self.background)

    async def aclose(self) -> None:
        """Cancel the jobs still running (their worker threads finish the section they are in)."""
        await self.background.close()
