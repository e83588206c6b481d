"""An existing store migrates by replay: a copy of a store an older release left (readings in the library's
JSON, read models built by older versions) is brought up to date by starting the projectors on it, and the
result equals what this release projects from the same history; the original is left as it was."""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import UUID

import psycopg
from eventsourcing.persistence import JSONTranscoder, Mapper
from psycopg import sql

from adapters.eventstore import WattLedger, store_env
from domain.meter import MeterDay
from infra.bootstrap import all_projectors
from infra.settings import load_settings
from projections.chain import verify
from projections.engine import ProjectionEngine, Projector
from projections.tracking import TRACKING
from tests.harness import DROPS, _with_dbname, tracking
from tests.integration.test_replay_equivalence import T0, dump, plug, seed_mixed_history
from tests.kit import seed_device


def seed_legacy_readings(app: WattLedger) -> UUID:
    """A plug whose readings were stored as the library's JSON, as releases before the compact form did."""
    transcoder = JSONTranscoder()
    app.register_transcodings(transcoder)
    legacy = Mapper[UUID](transcoder=transcoder)
    device_id = seed_device(app, "127.0.0.1:11999", plug(500.0), measured_at=T0)
    day_before = T0 - timedelta(days=1)
    meter = MeterDay(device_id=device_id, day=day_before.date().isoformat())
    for minute in range(1, 20):
        meter.record(day_before + timedelta(minutes=minute), plug(480.0 + minute), actor="system:poller")
    app.recorder.insert_events([legacy.to_stored_event(e) for e in meter.collect_events()])
    return device_id


def copy_database(url: str) -> tuple[str, str]:
    """A copy of the database of `url`, made from it as a template (its connections are ended first):
    the copy's URL and name."""
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    copy = f"{name}_copy"
    with psycopg.connect(_with_dbname(url, "postgres"), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(copy), sql.Identifier(name)))
    return _with_dbname(url, copy), copy


def test_a_copy_of_an_older_store_migrates_by_replay_to_what_this_release_projects(
    app: WattLedger, database_url: str
) -> None:
    projectors: list[Projector] = all_projectors(load_settings({**os.environ, "WATTLEDGER_TIMEZONE": "Europe/Berlin"}))
    legacy_plug = seed_legacy_readings(app)
    seed_mixed_history(app)
    engine = ProjectionEngine(app, database_url, projectors)
    engine.setup()
    engine.catch_up_all()
    expected = dump(database_url, projectors)
    versions = {name: row["version"] for name, row in tracking(database_url).items()}
    assert any(row for row in expected["wl_read.energy_readings"] if legacy_plug in row), "legacy readings projected"
    engine.close()

    # As an older release left it: every read model recorded with an older version, its rows not this
    # release's (here: one altered, one missing).
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"UPDATE {TRACKING} SET version = version - 1")
        conn.execute("UPDATE wl_read.devices SET alias = 'Old release' WHERE device_id = %s", (legacy_plug,))
        conn.execute("DELETE FROM wl_read.energy_readings WHERE device_id = %s", (legacy_plug,))
    old = dump(database_url, projectors)
    assert old != expected

    copy_url, copy_name = copy_database(database_url)
    migrated_app = WattLedger(store_env(copy_url))
    migrating = ProjectionEngine(migrated_app, copy_url, projectors)
    try:
        migrating.setup()
        migrating.catch_up_all()
        assert dump(copy_url, projectors) == expected
        assert {name: row["version"] for name, row in tracking(copy_url).items()} == versions
        with psycopg.connect(copy_url) as conn:
            assert verify(conn).intact
    finally:
        migrating.close()
        migrated_app.close()
        DROPS.put(_with_dbname(copy_url, "postgres"), copy_name)

    # The original is as the older release left it.
    assert dump(database_url, projectors) == old
    assert {name: row["version"] for name, row in tracking(database_url).items()} == {
        name: version - 1 for name, version in versions.items()
    }
