"""POST /api/compliance/exports: a background job with progress, its files downloaded and checked."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import zipfile
from datetime import datetime, timezone
from typing import Any

import httpx
import openpyxl

from adapters.export_files import looks_like_formula
from infra.bootstrap import Runtime
from tests.harness import ADMIN, HEATER, all_pages, seed_heater
from tests.kit import eventually, seed_device

Client = httpx.AsyncClient


async def finished(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """The job once it is no longer pending or running (polled every 50 ms, for at most 30 s)."""

    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/api/compliance/exports/{job['id']}")).json()
        return body if body["status"] not in ("pending", "running") else None

    finished_job: dict[str, Any] = await eventually(done, within=30, every=0.05, what=f"export {job['id']} finished")
    return finished_job


async def test_a_jsonl_export_runs_in_the_background_and_its_files_check_out(client: Client, runtime: Runtime) -> None:
    await seed_heater(runtime, "system:demo", readings=4)
    await asyncio.to_thread(runtime.engine.catch_up_all)
    head = (await client.get("/api/audit/head")).json()
    started = await client.post("/api/compliance/exports", json={"format": "jsonl"})
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("pending", "running", "completed")
    job = await finished(client, started.json())
    assert job["status"] == "completed" and job["progress"] == 1.0 and job["error"] is None
    files = {f["name"]: f for f in job["files"]}
    assert set(files) == {"events.jsonl", "manifest.json"}
    download = await client.get(files["events.jsonl"]["url"])
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == files["events.jsonl"]["sha256"]
    lines = [json.loads(line) for line in download.content.splitlines()]
    manifest = (await client.get(files["manifest.json"]["url"])).json()
    # The export holds the log up to its start, its own request included; its completion comes after.
    log = await all_pages(client, "/api/events", {"limit": 1000})
    assert lines == [e for e in log if e["position"] <= manifest["up_to_position"]]
    assert lines[-1]["aggregate"] == "complianceexport" and lines[-1]["type"] == "Requested"
    assert manifest["count"] == len(lines) == job["events_written"]
    assert manifest["chain_head"] == {"position": head["position"], "hash": head["hash"]}
    assert job["requested_by"].startswith("user:")
    await asyncio.to_thread(runtime.engine.catch_up_all)
    audit = (await client.get("/api/audit", params={"aggregate": "complianceexport", "order": "asc"})).json()
    assert [e["summary"] for e in audit["entries"]] == [
        f"user {ADMIN} requested a jsonl compliance export (no filters)",
        f"system (compliance) completed compliance export {job['id']}: {manifest['count']} events up to position "
        f"{manifest['last_position']}",
    ]


async def test_an_xlsx_export_opens_with_openpyxl_and_matches_the_log(client: Client, runtime: Runtime) -> None:
    await seed_heater(runtime, "system:demo", readings=2)
    job = await finished(client, (await client.post("/api/compliance/exports", json={
        "format": "xlsx", "aggregate": "meter",
    })).json())  # fmt: skip
    assert job["status"] == "completed", job
    content = (await client.get(f"/api/compliance/exports/{job['id']}/files/events.xlsx")).content
    book = openpyxl.load_workbook(io.BytesIO(content), read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    book.close()
    log = await all_pages(client, "/api/events", {"aggregate": "meter"})
    assert [r[0] for r in rows[1:]] == [e["position"] for e in log]
    assert [json.loads(str(r[7])) for r in rows[1:]] == [e["data"] for e in log]


async def test_exports_are_for_administrators_and_unknown_ones_are_404(
    client: Client, operator: Client, read_key: Client
) -> None:
    for who in (operator, read_key):
        refused = await who.post("/api/compliance/exports", json={"format": "csv"})
        assert refused.status_code == 403, refused.text
    missing = await client.get("/api/compliance/exports/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["error_code"] == "EXPORT_NOT_FOUND"
    bad = await client.post("/api/compliance/exports", json={"format": "pdf"})
    assert bad.status_code == 422
    job = await finished(client, (await client.post("/api/compliance/exports", json={"format": "csv"})).json())
    other = await client.get(f"/api/compliance/exports/{job['id']}/files/..%2F..%2Fsecrets")
    assert other.status_code == 404
    assert (await operator.get(f"/api/compliance/exports/{job['id']}")).status_code == 403


async def test_compliance_exports_hold_no_cell_a_spreadsheet_would_evaluate(client: Client, runtime: Runtime) -> None:
    formula = '=HYPERLINK("http://evil.test","x")'
    added_at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    await asyncio.to_thread(seed_device, runtime.app, "10.2.0.9", HEATER, measured_at=added_at, alias=formula)
    files: dict[str, bytes] = {}
    for fmt in ("csv", "xlsx"):
        job = await finished(client, (await client.post("/api/compliance/exports", json={"format": fmt})).json())
        assert job["status"] == "completed", job
        files[fmt] = (await client.get(f"/api/compliance/exports/{job['id']}/files/events.{fmt}")).content
    rows = list(csv.reader(io.StringIO(files["csv"].decode())))
    assert not any(looks_like_formula(cell) for row in rows for cell in row)
    added = next(r for r in rows if r[4] == "Added")
    assert json.loads(added[7])["alias"] == formula
    with zipfile.ZipFile(io.BytesIO(files["xlsx"])) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and "<f " not in sheet
    book = openpyxl.load_workbook(io.BytesIO(files["xlsx"]))
    cells = [cell for row in book.worksheets[0].iter_rows() for cell in row]
    assert all(c.data_type != "f" for c in cells)
    data = [json.loads(str(row[7].value)) for row in book.worksheets[0].iter_rows(min_row=2)]
    assert formula in [d.get("alias") for d in data]
