"""`wattledger project --checkpoint`, `--checkpoints`, `--prune-checkpoints` and `--rebuild … --from-checkpoint`."""

from __future__ import annotations

import zlib
from pathlib import Path

import psycopg

from adapters.bus import StreamConfig
from adapters.eventstore import WattLedger
from tests.harness import cli_env, wattledger
from tests.integration.test_replay import seed_plugs


def test_a_rebuild_from_checkpoints_replays_only_the_tail_and_a_damaged_one_exits_1(
    app: WattLedger, database_url: str, nats_url: str, stream_config: StreamConfig, tmp_path: Path
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    seed_plugs(app, 3, first_port=14000, readings=3)
    caught_up = wattledger("project", "--rebuild", "all", env=env, timeout=120)
    assert caught_up.returncode == 0, caught_up.stderr
    at = app.recorder.max_notification_id() or 0

    stored = wattledger("project", "--checkpoint", "all", env=env)
    assert stored.returncode == 0, stored.stderr
    lines = stored.stdout.splitlines()
    assert any(line.startswith("checkpoint ") and " of devices v" in line and f"at position {at:,}" in line
               for line in lines), stored.stdout  # fmt: skip
    assert all("rows," in line and "stored (" in line for line in lines)

    seed_plugs(app, 1, first_port=14100, readings=2)
    tail = (app.recorder.max_notification_id() or 0) - at
    resumed = wattledger("project", "--rebuild", "all", "--from-checkpoint", "--jobs", "2", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "in 2 processes" in resumed.stderr
    assert f": {tail:,} events replayed (from checkpoints: devices at {at:,}" in resumed.stderr, resumed.stderr

    verified = wattledger("project", "--verify", "--from-checkpoint", env=env, timeout=120)
    assert verified.returncode == 0, verified.stderr
    assert "identical" in verified.stderr

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT c.checkpoint, c.seq, c.data FROM wl_checkpoint.checkpoint_chunks c JOIN wl_checkpoint.checkpoints k "
            "ON k.id = c.checkpoint WHERE k.read_model = 'devices' AND c.part = 'devices'"
        ).fetchone()
        assert row is not None
        damaged = zlib.decompress(bytes(row[2])).replace(b"plug", b"plog", 1)
        conn.execute("UPDATE wl_checkpoint.checkpoint_chunks SET data = %s WHERE checkpoint = %s AND seq = %s "
                     "AND part = 'devices'", (zlib.compress(damaged), row[0], row[1]))  # fmt: skip
    refused = wattledger("project", "--rebuild", "devices", "--from-checkpoint", env=env)
    assert refused.returncode == 1
    assert "no longer match its digest" in refused.stderr and "nothing rebuilt" in refused.stderr

    fallback = wattledger("project", "--rebuild", "devices", "--from-checkpoint", "--or-from-zero", env=env)
    assert fallback.returncode == 0, fallback.stderr
    assert "warning:" in fallback.stderr and "rebuilding from zero" in fallback.stderr
    assert f"{app.recorder.max_notification_id():,} events replayed" in fallback.stderr

    listed = wattledger("project", "--checkpoints", env=env)
    assert listed.returncode == 0 and sorted(listed.stdout.splitlines()) == sorted(lines), listed.stdout
    again = wattledger("project", "--checkpoint", "devices", env=env)
    assert again.returncode == 0, again.stderr
    pruned = wattledger("project", "--prune-checkpoints", "1", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines()[-1] == "1 checkpoints deleted, the newest 1 of each read model kept"
    assert " of devices v" in pruned.stdout.splitlines()[0]


def test_from_checkpoint_or_jobs_alone_is_a_usage_error(
    database_url: str, nats_url: str, stream_config: StreamConfig, tmp_path: Path
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    result = wattledger("project", "--from-checkpoint", env=env)
    assert result.returncode == 2
    assert "--from-checkpoint goes with --rebuild" in result.stderr
    result = wattledger("project", "--rebuild", "all", "--jobs", "0", env=env)
    assert result.returncode == 2
    assert "--jobs N (1 or more) goes with --rebuild" in result.stderr
