"""Compliance export files against a real PostgreSQL: every format holds the log, the manifest checks it."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import openpyxl
import pytest

from adapters.compliance import COLUMNS, export_events
from adapters.history import EventFilter
from projections.chain import chain_link
from tests.harness import AuditedStore


@pytest.fixture
def store(database_url: str) -> Iterator[AuditedStore]:
    s = AuditedStore(database_url)
    s.readings(6)
    s.project()
    yield s
    s.close()


def log_rows(store: AuditedStore, where: EventFilter | None = None) -> list[dict[str, Any]]:
    """The log as the export must hold it: the contract envelope of each stored event, as JSON values."""
    from adapters.contract import envelope_for

    rows = []
    for n in store.app.recorder.select_notifications(start=1, limit=10_000):
        envelope = envelope_for(n.id, store.app.mapper.to_domain_event(n))
        if where is not None and not where.matches(envelope):
            continue
        values = (envelope.notification_id, envelope.originator_id, envelope.version, envelope.aggregate,
                  envelope.event, envelope.timestamp, envelope.actor, envelope.data)  # fmt: skip
        rows.append(msgspec.json.decode(msgspec.json.encode(dict(zip(COLUMNS, values)))))
    return rows


def as_text(row: dict[str, Any]) -> list[str]:
    """A log row as CSV/XLSX text cells: data as compact JSON, numbers as digits."""
    return [json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else str(v) for v in row.values()]


def test_jsonl_holds_every_event_and_the_manifest_checks_it(store: AuditedStore, tmp_path: Path) -> None:
    manifest = export_events(store.url, store.app, EventFilter(), "jsonl", tmp_path, chain_head=chain_link)
    data = (tmp_path / "events.jsonl").read_bytes()
    assert [json.loads(line) for line in data.splitlines()] == log_rows(store)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["count"] == manifest.count == len(log_rows(store))
    digest = hashlib.sha256(data).hexdigest()
    assert written["files"] == [{"name": "events.jsonl", "bytes": len(data), "sha256": digest}]
    newest = store.app.recorder.max_notification_id()
    assert written["first_position"] == 1 and written["last_position"] == written["up_to_position"] == newest
    assert written["chain_head"] == written["chain_head_now"]
    assert written["chain_head"]["position"] == newest and len(written["chain_head"]["hash"]) == 64
    assert written["first_timestamp"] <= written["last_timestamp"] and written["filters"] == {}


def test_csv_rows_match_the_log(store: AuditedStore, tmp_path: Path) -> None:
    export_events(store.url, store.app, EventFilter(), "csv", tmp_path, chain_head=chain_link)
    with (tmp_path / "events.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == list(COLUMNS)
    assert rows[1:] == [as_text(r) for r in log_rows(store)]


def test_xlsx_opens_with_openpyxl_and_starts_a_new_sheet_at_the_row_limit(store: AuditedStore, tmp_path: Path) -> None:
    expected = log_rows(store)
    export_events(store.url, store.app, EventFilter(), "xlsx", tmp_path, chain_head=chain_link, xlsx_max_rows=4)
    book = openpyxl.load_workbook(tmp_path / "events.xlsx", read_only=True)
    sheets = book.worksheets
    assert [s.title for s in sheets][:2] == ["events", "events_2"] and len(sheets) == -(-len(expected) // 4)
    cells: list[list[str]] = []
    for sheet in sheets:
        rows = list(sheet.iter_rows(values_only=True))
        assert list(rows[0]) == list(COLUMNS) and 1 <= len(rows) - 1 <= 4
        cells += [[str(v) for v in row] for row in rows[1:]]
    book.close()
    assert cells == [as_text(r) for r in expected]


def test_filters_select_what_the_api_would_and_are_in_the_manifest(store: AuditedStore, tmp_path: Path) -> None:
    where = EventFilter(aggregate="meter", event_type="ReadingRecorded", actor="test", from_position=3)
    manifest = export_events(store.url, store.app, where, "jsonl", tmp_path, chain_head=chain_link)
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    expected = [r for r in log_rows(store, where) if r["type"] == "ReadingRecorded" and r["position"] >= 3]
    assert lines == expected and manifest.count == len(expected) > 0
    assert manifest.filters == {"aggregate": "meter", "event_type": "ReadingRecorded", "actor": "test",
                                "from_position": 3}  # fmt: skip
    assert manifest.chain_head is not None and manifest.chain_head.position == lines[-1]["position"]


def test_the_command_writes_the_files_with_a_progress_bar(store: AuditedStore, nats_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": store.url, "NATS_URL": nats_url, "WATTLEDGER_DATA_DIR": str(tmp_path)}
    out = tmp_path / "handover"
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "export", "events", "--format", "csv", "--out", str(out),
         "--aggregate", "device"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exporting csv [" in done.stderr and "events/s" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["count"] == manifest["count"] > 0 and manifest["filters"]["aggregate"] == "device"
    assert (out / "events.csv").is_file()
