"""What the export use cases (`domain.export_jobs`, `domain.compliance_jobs`) need from the outside world.

Adapters implement these: the files written and removed, the history read into a
compliance export, a job's state kept on disk, background work, and the notes a job
leaves in the log. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import UUID

import msgspec

from domain.compliance import ExportJob, Manifest
from domain.exports import DeviceLabel, ExportSpec

__all__ = [
    "Background",
    "ComplianceProgress",
    "EventSelection",
    "ExportCatalog",
    "ExportFiles",
    "HistoryExporter",
    "JobJournal",
    "JobNotes",
    "WrittenExport",
]


class WrittenExport(msgspec.Struct, frozen=True, kw_only=True):
    """A data export's file as written: its name in the exports directory, size, rows and SHA-256."""

    file_name: str
    file_size: int
    record_count: int
    sha256: str


class ExportCatalog(Protocol):
    """What the data export jobs read from the read models."""

    async def labels(self, device_ids: list[UUID]) -> dict[UUID, DeviceLabel]:
        """Address, name and MAC of each device known (removed ones too)."""
        ...

    async def due(self, now: datetime, queued_before: datetime) -> tuple[list[UUID], list[UUID]]:
        """(exports queued before `queued_before`, oldest first; completed exports whose retention ended by `now`)."""
        ...

    async def priced_buckets(self, device_id: UUID, start: datetime, end: datetime) -> list[tuple[datetime, Decimal]]:
        """(start, cost) of the device's priced 5-minute buckets in [start, end), all its channels together."""
        ...


class ExportFiles(Protocol):
    """The data export files in one directory: written from the event store, found and removed by name."""

    @property
    def directory(self) -> Path: ...

    async def write(
        self, export_id: UUID, spec: ExportSpec, labels: dict[UUID, DeviceLabel], *, now: datetime, priced: bool,
        progress: Callable[[float], None],
    ) -> WrittenExport:
        """Write the export's file (readings up to `now`; with costs when `priced`), calling `progress` with the
        share done. Raises OSError if the disk refuses (nothing is left)."""
        ...

    def path_of(self, file_name: str) -> Path: ...

    def remove(self, file_name: str) -> None:
        """Remove the file if it is there."""
        ...


class EventSelection(Protocol):
    """A filter over the stored events, as the record of an export names it."""

    def described(self) -> dict[str, Any]: ...


W = TypeVar("W", bound=EventSelection, contravariant=True)
ComplianceProgress = Callable[[int, int, int], None]
"""(positions covered, positions to cover, events written), called on the event loop."""


class HistoryExporter(Protocol[W]):
    """Writes the stored events a filter selects into a directory, with its manifest."""

    async def export(self, where: W, fmt: str, directory: Path, progress: ComplianceProgress) -> Manifest:
        """Export into `directory`; returns the manifest written beside the data file. Raises what reading the
        store or writing the files raises (no data file is left)."""
        ...


class JobJournal(Protocol):
    """Where each compliance export job keeps its files and its state, so later processes can answer for it."""

    def directory(self, job_id: UUID) -> Path: ...

    def create(self, job_id: UUID) -> None:
        """Make the job's directory. Raises FileExistsError if it is there."""
        ...

    def save(self, job: ExportJob) -> None:
        """Keep the job's state; a disk that refuses is noted, never raised."""
        ...

    def load(self, job_id: UUID) -> ExportJob | None:
        """The job's state as last kept; None if there is none (or it cannot be read)."""
        ...


class Background(Protocol):
    """Work run beside the caller, one task per key."""

    def spawn(self, key: UUID, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `work()` unless work under `key` runs already."""
        ...

    def __contains__(self, key: object) -> bool: ...

    def __len__(self) -> int: ...

    async def wait(self, key: UUID) -> None:
        """Until the work under `key` (if any) has ended."""
        ...

    async def close(self) -> None:
        """Cancel the work still running and wait for it to end."""
        ...


class JobNotes(Protocol):
    """What a job says about itself in the process's log."""

    def is_outage(self, exc: BaseException) -> bool:
        """Whether `exc` is an expected fault (a server away), not a bug."""
        ...

    def fault(self, exc: BaseException, event: str, **context: Any) -> None:
        """Note a failure: one warning line for an outage, `event` with the traceback for anything else."""
        ...

    def describe(self, exc: BaseException) -> str:
        """The exception as one short line."""
        ...

    def info(self, event: str, **context: Any) -> None: ...

    def warning(self, event: str, **context: Any) -> None: ...
