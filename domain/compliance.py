"""Compliance exports as facts of the log: who asked for which part of the history, and what it held.

A `ComplianceExport` is requested (format and filters, by an actor), then completed (how
many events, which positions, the hash chain head it ends on, the SHA-256 of each file)
or failed. The files themselves live outside the log; these events are the record that
the handover happened and of what, so the audit trail shows every export.

`Manifest` describes the files of one export (written beside them as `manifest.json`), and
`ExportJob` is an export job's state as an API process keeps it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import ComplianceExportSettled, InvalidRequest

EXPORT_FORMATS = ("jsonl", "csv", "xlsx")
MANIFEST: Final = "manifest.json"


class ExportSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a finished export holds: `files` maps each data file's name to its SHA-256."""

    count: int
    first_position: int | None
    last_position: int | None
    chain_position: int | None
    chain_hash: str | None
    files: dict[str, str]


class ComplianceExport(Aggregate):
    """One export of the event history. Its id is the job's, chosen before it is requested."""

    class Requested(Aggregate.Created):
        format: str
        filters: dict[str, Any]
        actor: str

    class Completed(Aggregate.Event):
        count: int
        first_position: int | None
        last_position: int | None
        chain_position: int | None
        chain_hash: str | None
        files: dict[str, str]
        actor: str

    class Failed(Aggregate.Event):
        reason: str
        actor: str

    def __init__(self, *, format: str, filters: dict[str, Any], actor: str) -> None:
        self.format = format
        self.filters = dict(filters)
        self.requested_by = actor
        self.outcome: str | None = None

    @classmethod
    def request(cls, export_id: UUID, *, format: str, filters: dict[str, Any], actor: str) -> ComplianceExport:
        """Raises InvalidRequest for a format other than jsonl, csv or xlsx."""
        if format not in EXPORT_FORMATS:
            raise InvalidRequest(f"unknown export format {format!r}; one of {', '.join(EXPORT_FORMATS)}")
        return cls._create(cls.Requested, id=export_id, format=format, filters=dict(filters), actor=actor)

    def check_open(self) -> None:
        """Raises ComplianceExportSettled once the export has completed or failed."""
        if self.outcome is not None:
            raise ComplianceExportSettled(f"the export already {self.outcome}")

    def complete(self, summary: ExportSummary, *, actor: str) -> None:
        self.check_open()
        self._completed(
            count=summary.count, first_position=summary.first_position, last_position=summary.last_position,
            chain_position=summary.chain_position, chain_hash=summary.chain_hash, files=dict(summary.files),
            actor=actor,
        )  # fmt: skip

    def fail(self, reason: str, *, actor: str) -> None:
        self.check_open()
        self._failed(reason=reason[:500], actor=actor)

    @event(Completed)
    def _completed(
        self, count: int, first_position: int | None, last_position: int | None, chain_position: int | None,
        chain_hash: str | None, files: dict[str, str], actor: str,
    ) -> None:  # fmt: skip
        self.outcome = "completed"

    @event(Failed)
    def _failed(self, reason: str, actor: str) -> None:
        self.outcome = "failed"


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

    def summary(self) -> ExportSummary:
        """What the log records about the finished export."""
        head = self.chain_head
        return ExportSummary(
            count=self.count, first_position=self.first_position, last_position=self.last_position,
            chain_position=head.position if head else None, chain_hash=head.hash if head else None,
            files={f.name: f.sha256 for f in self.files},
        )  # fmt: skip


JobStatus = Literal["pending", "running", "completed", "failed"]


class ExportJob(msgspec.Struct, kw_only=True):
    """An export job as its process keeps it (`status.json`); `progress` runs from 0 to 1."""

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
