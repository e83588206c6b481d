"""Compliance exports in the log: requested once, then completed or failed once."""

from __future__ import annotations

import uuid

import pytest

from domain.compliance import ComplianceExport, ExportSummary
from domain.errors import ComplianceExportSettled, InvalidRequest

SUMMARY = ExportSummary(count=3, first_position=1, last_position=7, chain_position=7, chain_hash="ab" * 32,
                        files={"events.csv": "cd" * 32})  # fmt: skip


def test_an_export_is_requested_with_its_actor_and_completed_once() -> None:
    export = ComplianceExport.request(uuid.uuid4(), format="csv", filters={"aggregate": "device"}, actor="user:1")
    export.complete(SUMMARY, actor="system:compliance")
    events = export.collect_events()
    assert [type(e).__name__ for e in events] == ["Requested", "Completed"]
    assert [getattr(e, "actor") for e in events] == ["user:1", "system:compliance"]
    assert getattr(events[1], "files") == {"events.csv": "cd" * 32}
    with pytest.raises(ComplianceExportSettled):
        export.fail("too late", actor="system:compliance")


def test_a_failed_export_takes_no_completion_and_formats_are_checked() -> None:
    export = ComplianceExport.request(uuid.uuid4(), format="jsonl", filters={}, actor="cli:ops")
    export.fail("disk full", actor="cli:ops")
    with pytest.raises(ComplianceExportSettled):
        export.complete(SUMMARY, actor="cli:ops")
    with pytest.raises(InvalidRequest):
        ComplianceExport.request(uuid.uuid4(), format="pdf", filters={}, actor="cli:ops")
