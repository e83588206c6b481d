"""The backup routes over real PostgreSQL: create, list, download, delete, progress, and restore from an upload."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from psycopg import sql

from adapters.backup_archive import KdfParams
from adapters.eventstore import WattLedger
from api.controllers.backups import BackupDeps, BackupsController
from api.errors import EXCEPTION_HANDLERS
from domain.access import Permission, Principal, Role, permissions_for
from adapters.backup_jobs import BackupJobs
from domain.backup import Backup, BackupRestore
from infra.backups import backup_jobs, schedule_handlers, schedule_runner
from infra.runtime import all_projectors
from infra.settings import Settings
from projections.engine import ProjectionEngine
from tests.harness import http_client, ledger, seed_history, table_rows
from tests.kit import ManualClock

PASSPHRASE = "the site's backup passphrase"
ADMIN = Principal(kind="user", user_id=uuid4(), username="root", role=Role.ADMIN,
                  permissions=permissions_for(Role.ADMIN), session_id=uuid4())


@pytest.fixture
def store(database_url: str, settings: Settings) -> Iterator[WattLedger]:
    with ledger(database_url) as app:
        seed_history(app)
        engine = ProjectionEngine(app, database_url, all_projectors(settings))
        engine.setup()
        engine.catch_up_all()
        engine.close()
        yield app


def client(deps: BackupDeps) -> httpx.AsyncClient:
    app = Litestar(
        route_handlers=[BackupsController], exception_handlers=EXCEPTION_HANDLERS, debug=False,
        dependencies={"backup_deps": Provide(lambda: deps, sync_to_thread=False),
                      "principal": Provide(lambda: ADMIN, sync_to_thread=False)},
    )  # fmt: skip
    return http_client(app)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 2, tzinfo=timezone.utc))


@pytest.fixture
def jobs(store: WattLedger, database_url: str, settings: Settings, manual_clock: ManualClock) -> BackupJobs:
    jobs = backup_jobs(settings, store, database_url, manual_clock, PASSPHRASE)
    original = jobs.create

    async def fast(**options: Any) -> Any:
        return await original(**options, kdf=KdfParams(log2n=10))

    jobs.create = fast  # type: ignore[method-assign]
    return jobs


@pytest.fixture
async def http(
    store: WattLedger, jobs: BackupJobs, settings: Settings, manual_clock: ManualClock
) -> AsyncIterator[httpx.AsyncClient]:
    deps = BackupDeps(jobs=jobs, schedules=schedule_handlers(store, manual_clock),
                      quarantine=settings.data_dir / "backups" / "incoming", max_upload_bytes=1 << 20)
    async with client(deps) as c:
        yield c


def databases(database_url: str, like: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,))]


def stored(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT notification_id, originator_id, originator_version, topic, state "
                            "FROM wl_events.wattledger_events ORDER BY notification_id").fetchall()


def test_every_backup_route_needs_the_backups_permission() -> None:
    handlers = [h for h in vars(BackupsController).values() if isinstance(h, HTTPRouteHandler)]
    assert len(handlers) == 10
    assert all(h.opt.get("permission") is Permission.BACKUPS_MANAGE for h in handlers)


async def test_create_list_download_progress_and_delete(http: httpx.AsyncClient, settings: Settings) -> None:
    created = await http.post("/api/backups/create", json={"type": "manual", "compression": "high"})
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["includes"] == ["events", "keys", "config"] and entry["event_count"] > 50
    assert [e["filename"] for e in (await http.get("/api/backups")).json()] == [entry["filename"]]
    progress = (await http.get("/api/backups/progress")).json()
    assert (progress["status"], progress["operation"], progress["progress"]) == ("completed", "backup", 1.0)
    download = await http.get(f"/api/backups/{entry['filename']}/download")
    assert download.status_code == 200
    assert download.content == (settings.data_dir / "backups" / entry["filename"]).read_bytes()
    for name in ("..%2F..%2Fetc%2Fpasswd", "wattledger_backup_20260302_000000_00000000.wlbackup", "x.json"):
        assert (await http.get(f"/api/backups/{name}/download")).status_code == 404
    assert (await http.delete(f"/api/backups/{entry['filename']}")).status_code == 204
    assert (await http.get("/api/backups")).json() == []
    assert (await http.delete(f"/api/backups/{entry['filename']}")).json()["error_code"] == "BACKUP_NOT_FOUND"


async def test_an_unknown_field_or_compression_is_refused(http: httpx.AsyncClient) -> None:
    for body in ({"compression": "ultra"}, {"encrypt": False}):
        refused = await http.post("/api/backups/create", json=body)
        assert refused.status_code in (400, 422) and refused.json()["error_code"], refused.text
    assert (await http.get("/api/backups")).json() == []


async def test_exports_are_not_archived_so_asking_for_them_is_refused(http: httpx.AsyncClient) -> None:
    refused = await http.post("/api/backups/create", json={"include_exports": True})
    assert refused.status_code == 422 and refused.json()["error_code"] == "VALIDATION_ERROR", refused.text
    assert "not archived" in refused.text, refused.text
    schedule = {"name": "Nightly", "cron": "0 2 * * *", "options": {"include_exports": True}}
    unscheduled = await http.post("/api/backups/schedules", json=schedule)
    assert unscheduled.status_code == 422 and "include_exports" in unscheduled.text, unscheduled.text
    assert (await http.get("/api/backups")).json() == [] and (await http.get("/api/backups/schedules")).json() == []
    kept = await http.post("/api/backups/create", json={"include_exports": False, "include_logs": True})
    assert kept.status_code == 201 and "exports" not in kept.json()["includes"], kept.text


async def test_a_restore_goes_into_a_new_database_and_a_bad_one_creates_none(
    http: httpx.AsyncClient, settings: Settings, database_url: str
) -> None:
    entry = (await http.post("/api/backups/create", json={})).json()
    archive = (settings.data_dir / "backups" / entry["filename"]).read_bytes()
    name = f"wl_test_restored_{uuid4().hex[:8]}"
    wrong = await http.post("/api/backups/restore", files={"file": ("a.wlbackup", archive)},
                            data={"passphrase": "not the passphrase", "options": f'{{"database": "{name}"}}'})
    assert wrong.status_code == 422 and wrong.json()["error_code"] == "BACKUP_REFUSED"
    assert "passphrase" in wrong.json()["detail"] and databases(database_url, name) == []
    big = await http.post("/api/backups/restore", files={"file": ("a.wlbackup", b"\0" * (2 << 20))},
                          data={"passphrase": PASSPHRASE})
    assert big.status_code == 413
    try:
        done = await http.post("/api/backups/restore", files={"file": ("a.wlbackup", archive)},
                               data={"passphrase": PASSPHRASE, "options": f'{{"database": "{name}"}}'})
        assert done.status_code == 200, done.text
        assert done.json()["database"] == name and done.json()["events"] == entry["event_count"]
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
        restored = psycopg.conninfo.make_conninfo(**{**{k: str(v) for k, v in parts.items()}, "dbname": name})
        backed_up = [r for r in stored(database_url) if r[0] <= entry["last_position"]]
        assert stored(restored)[: len(backed_up)] == backed_up
        taken = await http.post("/api/backups/restore", files={"file": ("a.wlbackup", archive)},
                                data={"passphrase": PASSPHRASE, "options": f'{{"database": "{name}"}}'})
        assert taken.status_code == 422 and "exists already" in taken.json()["detail"]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert list((settings.data_dir / "backups" / "incoming").iterdir()) == []


async def test_schedules_are_kept_checked_and_run_with_their_retention(
    http: httpx.AsyncClient, store: WattLedger, jobs: BackupJobs, manual_clock: ManualClock
) -> None:
    body = {"name": "Daily Backup", "cron": "0 2 * * *", "enabled": True, "retention_days": 2,
            "options": {"include_logs": True, "compression": "normal"}}
    created = await http.post("/api/backups/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    bad = await http.post("/api/backups/schedules", json={**body, "cron": "0 25 * * *"})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_SCHEDULE"
    assert [s["id"] for s in (await http.get("/api/backups/schedules")).json()] == [schedule["id"]]
    runner = schedule_runner(store, jobs, manual_clock)
    manual_clock.set(datetime(2026, 3, 2, 2, 5, tzinfo=timezone.utc))
    assert await runner.run_once() == 1
    first = (await http.get("/api/backups")).json()
    assert [(e["type"], e["schedule_id"]) for e in first] == [("scheduled", schedule["id"])]
    manual_clock.set(datetime(2026, 3, 5, 2, 5, tzinfo=timezone.utc))
    assert await runner.run_once() == 1
    kept = (await http.get("/api/backups")).json()
    assert len(kept) == 1 and kept[0]["filename"] != first[0]["filename"]
    pruned: object = store.repository.get(first[0]["backup_id"])
    assert isinstance(pruned, Backup) and pruned.deleted
    changed = await http.put(f"/api/backups/schedules/{schedule['id']}", json={**body, "enabled": False})
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert (await http.delete(f"/api/backups/schedules/{schedule['id']}")).status_code == 204
    missing = await http.delete(f"/api/backups/schedules/{schedule['id']}")
    assert missing.status_code == 404 and missing.json()["error_code"] == "BACKUP_SCHEDULE_NOT_FOUND"


def _damaged(archive: bytes, how: str) -> bytes:
    data = bytearray(archive)
    if how == "truncated":
        return bytes(data[: len(data) - 100])
    if how == "altered":
        data[len(data) // 2] ^= 0x40
    elif how == "future":
        data[9] = 2
    return bytes(data)


async def test_a_refused_restore_is_recorded_with_its_actor_and_reason_and_told_in_the_audit_log(
    http: httpx.AsyncClient, store: WattLedger, settings: Settings, database_url: str
) -> None:
    entry = (await http.post("/api/backups/create", json={})).json()
    archive = (settings.data_dir / "backups" / entry["filename"]).read_bytes()
    name = f"wl_test_refused_{uuid4().hex[:8]}"
    cases = [("truncated", PASSPHRASE, "truncated"), ("altered", PASSPHRASE, "altered"),
             ("wrong passphrase", "not the passphrase", "passphrase"), ("future", PASSPHRASE, "newer")]
    for how, passphrase, says in cases:
        refused = await http.post("/api/backups/restore", files={"file": ("a.wlbackup", _damaged(archive, how))},
                                  data={"passphrase": passphrase, "options": f'{{"database": "{name}"}}'})
        assert refused.status_code == 422 and refused.json()["error_code"] == "BACKUP_REFUSED", how
        assert says in refused.json()["detail"] and databases(database_url, name) == [], how
    engine = ProjectionEngine(store, database_url, all_projectors(settings))
    try:
        engine.catch_up_all()
    finally:
        engine.close()
    rows = [r for r in table_rows(database_url, "wl_read.audit_log", "position") if r["aggregate"] == "backuprestore"]
    assert [(r["event"], r["actor"]) for r in rows] == [("Refused", ADMIN.actor)] * len(cases)
    for row, (how, _, says) in zip(rows, cases, strict=True):
        refusal: object = store.repository.get(row["originator_id"])
        assert isinstance(refusal, BackupRestore) and refusal.refused_because is not None, how
        assert says in refusal.refused_because and refusal.refused_because in row["summary"], how
        assert refusal.sha256 == hashlib.sha256(_damaged(archive, how)).hexdigest(), how
        assert row["summary"].startswith(f"{row['actor_name']} refused to restore a backup archive (SHA-256 "), how
    assert [e["filename"] for e in (await http.get("/api/backups")).json()] == [entry["filename"]]
