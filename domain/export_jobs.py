"""The data export jobs: write each requested export's file and record how it ended; sweep the stale and expired.

A job loads the export, stops if it is no longer queued, checks its devices are known,
has the file written (readings up to now, priced when the export asks for costs) and
records it completed, or failed with the reason. A database outage leaves the export
queued: the sweep, run every minute by an API process, resumes exports queued for longer
than `STALE` (their process stopped) and removes the files whose retention ended, each
recorded expired. Works over ports only (`domain.export_ports`); every outcome is an event
of the `DataExport` aggregate, recorded by `ExportHandlers` as `system:exports`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from domain.export_handlers import ExportHandlers
from domain.export_ports import Background, ExportCatalog, ExportFiles, JobNotes
from domain.exports import DataExport

STALE = timedelta(minutes=15)
"""A queued export older than this is taken to be abandoned by the process that accepted it, and resumed."""


class DataExportJobs:
    """Runs data export jobs in this process and sweeps expired files.

    `progress` holds the share done (0 to 1) of the jobs running here.
    """

    def __init__(
        self,
        handlers: ExportHandlers,
        catalog: ExportCatalog,
        files: ExportFiles,
        background: Background,
        notes: JobNotes,
        *,
        retention: timedelta,
        on_saved: Callable[[], None] = lambda: None,
    ) -> None:
        self.handlers = handlers
        self.catalog = catalog
        self.files = files
        self.background = background
        self.notes = notes
        self.retention = retention
        self.on_saved = on_saved
        self.progress: dict[UUID, float] = {}

    @property
    def directory(self) -> Path:
        """Where the files are."""
        return self.files.directory

    def path_of(self, file_name: str) -> Path:
        return self.files.path_of(file_name)

    def remove_file(self, file_name: str | None) -> None:
        if file_name:
            self.files.remove(file_name)

    def start(self, export_id: UUID) -> None:
        """Start the export's job unless it already runs here."""
        if export_id in self.background:
            return
        self.progress[export_id] = 0.0
        self.background.spawn(export_id, lambda: self._run(export_id))

    async def wait(self, export_id: UUID) -> None:
        """Until the export's job (if it runs here) has finished."""
        await self.background.wait(export_id)

    async def _load(self, export_id: UUID) -> DataExport:
        export = await self.handlers.store.aggregate(export_id, DataExport)
        assert export is not None
        return export

    async def _run(self, export_id: UUID) -> None:
        try:
            export = await self._load(export_id)
            if export.status != "queued":
                return
            labels = await self.catalog.labels(list(export.spec.devices))
            missing = [str(d) for d in export.spec.devices if d not in labels]
            if missing:
                await self.handlers.settle(export_id, outcome="failed", error=f"unknown devices {missing}")
                return

            def note(share: float) -> None:
                self.progress[export_id] = share

            spec = export.spec
            written = await self.files.write(
                export_id, spec, labels, now=self.handlers.clock.now(), progress=note,
                priced="cost" in spec.fields and spec.aggregation != "raw",
            )  # fmt: skip
            stored = await self.handlers.settle(
                export_id, outcome="completed", file_name=written.file_name, file_size=written.file_size,
                record_count=written.record_count, sha256=written.sha256, retention=self.retention,
            )
            if not stored.position:
                self.files.remove(written.file_name)
            self.notes.info("export.completed", export_id=str(export_id), rows=written.record_count,
                            bytes=written.file_size)  # fmt: skip
        except Exception as exc:
            self.notes.fault(exc, "export.failed", export_id=str(export_id))
            if not self.notes.is_outage(exc):
                # An outage leaves the export queued: the sweep writes it again once the database answers.
                await self.handlers.settle(export_id, outcome="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.progress.pop(export_id, None)
            self.on_saved()

    async def sweep(self, now: datetime | None = None) -> int:
        """Resume exports queued for longer than `STALE` (their process stopped); delete files past retention,
        each recorded expired. Returns the exports expired."""
        moment = now or self.handlers.clock.now()
        queued, expired = await self.catalog.due(moment, moment - STALE)
        for export_id in queued:
            self.start(export_id)
        for export_id in expired:
            export = await self._load(export_id)
            self.remove_file(export.file_name)
            await self.handlers.expire(export_id)
            self.notes.info("export.expired", export_id=str(export_id))
        if expired:
            self.on_saved()
        return len(expired)

    async def close(self) -> None:
        """Cancel the jobs running here (they stay queued and are resumed by the next sweep)."""
        await self.background.close()
