"""`wattledger backup create|list|restore` as an operator runs them: real processes, real servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from adapters.bus import StreamConfig
from tests.harness import cli_env, fresh_database, ledger, seed_history, wattledger


def stored(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM wl_events.wattledger_events ORDER BY notification_id"
        ).fetchall()


def test_create_list_and_restore_into_a_new_database(
    tmp_path: Path, database_url: str, nats_url: str, server_urls: tuple[str, str], stream_config: StreamConfig
) -> None:
    with ledger(database_url) as app:
        seed_history(app)
    env = {**cli_env(database_url, nats_url, stream_config, tmp_path / "data"),
           "WATTLEDGER_BACKUP_PASSPHRASE": "an operator's passphrase"}
    created = wattledger("backup", "create", "--compression", "high", env=env)
    assert created.returncode == 0, created.stderr
    entry = json.loads(created.stdout)
    listed = wattledger("backup", "list", env=env)
    assert [e["filename"] for e in json.loads(listed.stdout)] == [entry["filename"]]
    archive = tmp_path / "data" / "backups" / entry["filename"]
    backed_up = [row for row in stored(database_url) if row[0] <= entry["last_position"]]
    new_data = tmp_path / "new-machine"
    with fresh_database(server_urls[0]) as target:
        restore_env = {**env, "WATTLEDGER_DATA_DIR": str(new_data), "DATABASE_URL": ""}
        restored = wattledger("backup", "restore", str(archive), "--into-database-url", target, env=restore_env)
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["events"] == entry["event_count"] == len(backed_up)
        assert stored(target)[: len(backed_up)] == backed_up
        assert (new_data / "restored-settings.json").is_file()
        again = wattledger("backup", "restore", str(archive), "--into-database-url", target, env=restore_env)
        assert again.returncode == 1
        assert "must be empty" in again.stderr and "nothing was changed" in again.stderr


def test_no_archive_without_a_passphrase(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = {k: v for k, v in cli_env(database_url, nats_url, stream_config, tmp_path).items()
           if k != "WATTLEDGER_BACKUP_PASSPHRASE"}
    result = wattledger("backup", "create", env=env)
    assert result.returncode == 2
    assert "WATTLEDGER_BACKUP_PASSPHRASE" in result.stderr
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())
