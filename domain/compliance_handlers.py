"""The use cases of compliance exports: record that one was asked for, and how it ended."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.compliance import ComplianceExport, ExportSummary
from domain.errors import ComplianceExportNotFound
from domain.ports import EventStore
from domain.text import check_text


class ComplianceHandlers:
    """Records the facts of each export in the log, over the store port only.

    The export job itself (reading the log, writing files) runs in an adapter; these
    handlers bracket it with `request` before it starts and `complete` or `fail` after.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def request(self, export_id: UUID, *, format: str, filters: dict[str, Any], actor: str) -> int:
        """Record the request; returns its position. Raises InvalidRequest for an unknown format, InvalidText
        for a filter's text that breaks the rule for free text."""
        for name, value in filters.items():
            if isinstance(value, str):
                check_text(value, field=name)
        export = ComplianceExport.request(export_id, format=format, filters=filters, actor=actor)
        return await self.store.save(export)

    async def complete(self, export_id: UUID, summary: ExportSummary, *, actor: str) -> int:
        """Record what the export holds. Raises ComplianceExportNotFound, ComplianceExportSettled."""
        export = await self._load(export_id)
        export.complete(summary, actor=actor)
        return await self.store.save(export)

    async def fail(self, export_id: UUID, reason: str, *, actor: str) -> int:
        """Record that the export failed and why. Raises ComplianceExportNotFound, ComplianceExportSettled."""
        export = await self._load(export_id)
        export.fail(reason, actor=actor)
        return await self.store.save(export)

    async def _load(self, export_id: UUID) -> ComplianceExport:
        export = await self.store.aggregate(export_id, ComplianceExport)
        if export is None:
            raise ComplianceExportNotFound(f"no compliance export {export_id}")
        return export
