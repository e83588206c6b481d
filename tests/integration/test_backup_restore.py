"""A backup restored into a new database holds the same log, keys, chain and read models; a bad archive changes nothing."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from adapters.backup_archive import KdfParams
from adapters.backup_jobs import BackupJobs, restore_archive
from adapters.eventstore import WattLedger
from adapters.identity import AUTH_DDL, AUTH_SCHEMA, SECRETS_TABLE, SIGNING_KEYS_TABLE
from domain.backup import Backup
from domain.errors import BackupRefused, InvalidRequest
from infra.backups import backup_jobs, restore_tools
from infra.runtime import all_projectors
from infra.settings import Settings
from projections.chain import chain_head_sync
from projections.checkpoints import list_checkpoints, newest, write
from projections.engine import ProjectionEngine
from tests.harness import fresh_database, ledger, seed_history, table_rows
from tests.kit import ManualClock

PASSPHRASE = "a long backup passphrase"
FAST = KdfParams(log2n=10)
MOMENT = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def stored(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM wl_events.wattledger_events ORDER BY notification_id"
        ).fetchall()


def read_models(database_url: str, settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every read model's rows but the audit log's and the chain's, which hold the backup's own events too."""
    tables = [t for p in all_projectors(settings) if p.name not in ("audit", "chain") for t in p.tables]
    return {t.name: table_rows(database_url, t.name, t.key) for t in tables}


def keys(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return [*conn.execute(f"SELECT name, value, created_at FROM {SECRETS_TABLE} ORDER BY name").fetchall(),
                *conn.execute(f"SELECT kid, secret, created_at FROM {SIGNING_KEYS_TABLE} ORDER BY kid").fetchall()]


def projected(app: WattLedger, database_url: str, settings: Settings) -> None:
    engine = ProjectionEngine(app, database_url, all_projectors(settings))
    try:
        engine.setup()
        engine.catch_up_all()
    finally:
        engine.close()


@pytest.fixture
def source(database_url: str, settings: Settings) -> Iterator[tuple[WattLedger, str]]:
    with ledger(database_url) as app:
        seed_history(app)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}")
            for statement in filter(str.strip, AUTH_DDL.split(";")):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {SECRETS_TABLE} (name, value) VALUES ('secret_box', 'box-key')")
            conn.execute(f"INSERT INTO {SIGNING_KEYS_TABLE} (kid, secret) VALUES ('k1', 'signing-secret')")
        projected(app, database_url, settings)
        yield app, database_url


@pytest.fixture
def jobs(source: tuple[WattLedger, str], settings: Settings) -> BackupJobs:
    app, url = source
    return backup_jobs(settings, app, url, ManualClock(MOMENT), PASSPHRASE)


@pytest.fixture
def target(server_urls: tuple[str, str]) -> Iterator[tuple[WattLedger, str]]:
    with fresh_database(server_urls[0]) as url, ledger(url) as app:
        yield app, url


async def test_a_restored_store_holds_the_same_events_keys_chain_and_read_models(
    source: tuple[WattLedger, str], jobs: BackupJobs, target: tuple[WattLedger, str], settings: Settings,
) -> None:
    app, url = source
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    before = stored(url)
    backed_up = [row for row in before if row[0] <= entry.last_position]
    assert entry.event_count == len(backed_up) > 50
    target_app, target_url = target
    manifest = await restore_archive(jobs.file(entry.filename), PASSPHRASE, target_app, target_url, jobs.tools,
                                     actor="cli:ops", secret_key_fingerprint=None)
    after = stored(target_url)
    assert after[: len(backed_up)] == backed_up
    assert [row[3] for row in after[len(backed_up):]] == ["domain.backup:BackupRestore.Restored"]
    assert manifest.chain_head is not None and manifest.computed_head is not None
    assert keys(target_url) == keys(url)
    # The source's read models at the backup's position, against the restored ones (less the restore event).
    projected(app, url, settings)
    expected, restored = read_models(url, settings), read_models(target_url, settings)
    assert any(expected.values()) and restored == expected
    last = backed_up[-1][0]
    with psycopg.connect(target_url) as restored_conn, psycopg.connect(url) as source_conn:
        restored_head, source_head = chain_head_sync(restored_conn, last), chain_head_sync(source_conn, last)
    assert restored_head == source_head and restored_head is not None
    assert (restored_head.position, restored_head.hash) == (last, manifest.computed_head.hash)


async def test_the_backup_is_recorded_with_its_actor(source: tuple[WattLedger, str], jobs: BackupJobs) -> None:
    app, _ = source
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    assert entry.backup_id is not None
    backup: object = app.repository.get(entry.backup_id)
    assert isinstance(backup, Backup) and backup.outcome == "completed" and backup.filename == entry.filename
    assert [e.filename for e in jobs.list()] == [entry.filename]
    await jobs.delete(entry.filename, actor="user:admin")
    deleted: object = app.repository.get(entry.backup_id)
    assert jobs.list() == [] and isinstance(deleted, Backup) and deleted.deleted


async def test_no_backup_without_a_passphrase(source: tuple[WattLedger, str], settings: Settings) -> None:
    app, url = source
    jobs = backup_jobs(settings, app, url, ManualClock(MOMENT), None)
    with pytest.raises(InvalidRequest, match="passphrase"):
        await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    assert not (settings.data_dir / "backups").exists() or not list((settings.data_dir / "backups").iterdir())


def damaged(path: Path, how: str) -> Path:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "altered":
        data[len(data) // 2] ^= 0x40
    elif how == "future":
        data[9] = 2
    out = path.with_name(f"{how}.wlbackup")
    out.write_bytes(bytes(data))
    return out


REFUSALS = [("truncated", PASSPHRASE, "truncated"), ("altered", PASSPHRASE, "altered"),
            ("none", "not the passphrase", "passphrase"), ("future", PASSPHRASE, "newer")]


async def test_a_bad_archive_is_refused_and_the_target_stays_empty(
    jobs: BackupJobs, target: tuple[WattLedger, str]
) -> None:
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    target_app, target_url = target
    for how, passphrase, says in REFUSALS:
        path = damaged(jobs.file(entry.filename), how)
        with pytest.raises(BackupRefused, match=says):
            await restore_archive(path, passphrase, target_app, target_url, jobs.tools, actor="cli:ops",
                                  secret_key_fingerprint=None)
        assert stored(target_url) == [], how
        with psycopg.connect(target_url) as conn:
            assert conn.execute("SELECT to_regclass('wl_auth.secrets')").fetchone() == (None,), how


async def test_a_restore_needs_the_same_secret_key(
    source: tuple[WattLedger, str], settings: Settings, target: tuple[WattLedger, str]
) -> None:
    app, url = source
    keyed = Settings(**{**{f: getattr(settings, f) for f in settings.__struct_fields__},
                        "secret_key": "a-secret-key-of-this-site"})
    jobs = backup_jobs(keyed, app, url, ManualClock(MOMENT), PASSPHRASE)
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    target_app, target_url = target
    with pytest.raises(BackupRefused, match="WATTLEDGER_SECRET_KEY"):
        await restore_archive(jobs.file(entry.filename), PASSPHRASE, target_app, target_url,
                              restore_tools(settings), actor="cli:ops", secret_key_fingerprint=None)
    assert stored(target_url) == []


def checkpoint_all(database_url: str, settings: Settings) -> int:
    written = [write(database_url, p) for p in all_projectors(settings) if p.name != "chain"]
    return len(written)


async def test_a_backup_carries_the_read_models_checkpoints_and_a_restore_replays_only_after_them(
    source: tuple[WattLedger, str], jobs: BackupJobs, target: tuple[WattLedger, str], settings: Settings,
) -> None:
    app, url = source
    carried = checkpoint_all(url, settings)
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    assert "checkpoints" in entry.includes
    target_app, target_url = target
    with capture_logs() as logs:
        await restore_archive(jobs.file(entry.filename), PASSPHRASE, target_app, target_url, jobs.tools,
                              actor="cli:ops", secret_key_fingerprint=None)
    replayed = [e for e in logs if e["event"] == "backup.read_models_replayed"]
    # Only the events after the checkpoints were replayed: the backup's own and the restore's.
    assert replayed and replayed[0]["checkpoints"] == carried
    assert entry.event_count is not None and replayed[0]["events"] < entry.event_count / 10
    with psycopg.connect(target_url) as conn:
        assert len(list_checkpoints(conn)) == carried
    projected(app, url, settings)
    expected = read_models(url, settings)
    assert any(expected.values()) and read_models(target_url, settings) == expected


async def test_a_carried_checkpoint_that_fails_its_digest_is_set_aside_and_the_restore_replays_from_zero(
    source: tuple[WattLedger, str], jobs: BackupJobs, target: tuple[WattLedger, str], settings: Settings,
) -> None:
    app, url = source
    checkpoint_all(url, settings)
    with psycopg.connect(url) as conn:
        victim = newest(conn, "devices")
        assert victim is not None
        conn.execute("UPDATE wl_checkpoint.checkpoint_chunks SET data = %s WHERE checkpoint = %s AND part = 'devices'",
                     (zlib.compress(b"forged\trow\n"), victim.id))  # fmt: skip
    entry = await jobs.create(kind="manual", actor="user:admin", kdf=FAST)
    target_app, target_url = target
    with capture_logs() as logs:
        await restore_archive(jobs.file(entry.filename), PASSPHRASE, target_app, target_url, jobs.tools,
                              actor="cli:ops", secret_key_fingerprint=None)
    assert [e for e in logs if e["event"] == "backup.checkpoints_refused"]
    replayed = [e for e in logs if e["event"] == "backup.read_models_replayed"]
    assert replayed and replayed[0]["checkpoints"] == 0
    assert entry.event_count is not None and replayed[0]["events"] >= entry.event_count
    projected(app, url, settings)
    expected = read_models(url, settings)
    assert any(expected.values()) and read_models(target_url, settings) == expected
