"""The hash chain against a real PostgreSQL: edits behind the system's back are found and named."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.history import EVENTS_TABLE, StoredRecord
from infra.audit_cli import run_verify
from projections.chain import CHAIN, GENESIS, LINK_SPAN, PREFIX, ChainHead, ChainRow, chain_head_sync, link
from tests.harness import AuditedStore


@pytest.fixture
def store(database_url: str) -> Iterator[AuditedStore]:
    s = AuditedStore(database_url)
    s.readings(8)
    s.project()
    yield s
    s.close()


def positions(store: AuditedStore) -> list[int]:
    return [int(r[0]) for r in store.sql(f"SELECT notification_id FROM {EVENTS_TABLE} ORDER BY 1")]


def chain_hashes(store: AuditedStore) -> list[tuple[int, bytes]]:
    """(position, chain hash) of every stored event, recomputed from the store."""
    rows: list[tuple[Any, ...]] = store.sql(
        f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
        f"ORDER BY notification_id"
    )  # fmt: skip
    previous, hashes = GENESIS, []
    for row in rows:
        previous = link(previous, StoredRecord(int(row[0]), row[1], int(row[2]), str(row[3]), bytes(row[4])))
        hashes.append((int(row[0]), previous))
    return hashes


def links(store: AuditedStore) -> list[ChainRow]:
    return [CHAIN.decode(r) for r in store.sql(f"{CHAIN.select} ORDER BY link")]


def test_an_untouched_history_verifies_and_every_link_hashes_its_predecessor(store: AuditedStore) -> None:
    result = store.verify()
    stored = positions(store)
    assert result.intact and result.checked == len(stored) and result.unchained == 0
    chain = links(store)
    assert len(chain) == 1, "one link holds a span of positions, not one event"
    entries = [e for row in chain for e in row.entries()]
    hashes = chain_hashes(store)
    assert [p for p, _ in entries] == stored
    assert [prefix for _, prefix in entries] == [h[:PREFIX].hex() for _, h in hashes]
    assert (chain[-1].position, chain[-1].hash) == (hashes[-1][0], hashes[-1][1].hex())


def test_links_cover_fixed_spans_so_a_rebuild_in_other_batches_gives_the_same_rows(store: AuditedStore) -> None:
    sequence = store.sql("SELECT pg_get_serial_sequence(%s, 'notification_id')", EVENTS_TABLE)[0][0]
    store.sql("SELECT setval(%s::regclass, %s)", sequence, LINK_SPAN - 3)
    for start in range(100, 106):
        store.readings(1, start=start)
        store.project()
    live = links(store)
    assert [row.link for row in live] == [0, 1] and store.verify().intact

    store.engine.rebuild("chain")

    assert links(store) == live


def test_the_head_at_a_position_inside_a_link_is_that_events_chain_hash(store: AuditedStore) -> None:
    hashes = chain_hashes(store)
    position, digest = hashes[3]
    with psycopg.connect(store.url) as conn:
        assert chain_head_sync(conn, position) == ChainHead(position=position, hash=digest.hex())
        assert chain_head_sync(conn, position + 1000) == ChainHead(position=hashes[-1][0], hash=hashes[-1][1].hex())
    store.sql(f"UPDATE {EVENTS_TABLE} SET state = state || '\\x20'::bytea WHERE notification_id = %s", hashes[1][0])
    with psycopg.connect(store.url) as conn:
        assert chain_head_sync(conn, position) is None, "no recorded whole hash before the altered event's link"


def test_one_changed_byte_of_a_stored_payload_is_named_by_its_position(store: AuditedStore) -> None:
    target = positions(store)[4]
    store.sql(
        f"UPDATE {EVENTS_TABLE} SET state = set_byte(state, 20, get_byte(state, 20) # 1) WHERE notification_id = %s",
        target,
    )
    result = store.verify()
    assert result.problem is not None and result.problem.position == target
    assert result.problem.kind == "changed"
    assert result.checked == 4


def test_a_deleted_event_is_named_by_its_position(store: AuditedStore) -> None:
    target = positions(store)[3]
    store.sql(f"DELETE FROM {EVENTS_TABLE} WHERE notification_id = %s", target)
    problem = store.verify().problem
    assert problem is not None and (problem.position, problem.kind) == (target, "deleted")


def test_the_newest_event_deleted_is_named_too(store: AuditedStore) -> None:
    target = positions(store)[-1]
    store.sql(f"DELETE FROM {EVENTS_TABLE} WHERE notification_id = %s", target)
    problem = store.verify().problem
    assert problem is not None and (problem.position, problem.kind) == (target, "deleted")


def test_an_event_inserted_into_a_gap_of_the_log_is_named(store: AuditedStore) -> None:
    sequence = store.sql("SELECT pg_get_serial_sequence(%s, 'notification_id')", EVENTS_TABLE)[0][0]
    store.sql("SELECT setval(%s::regclass, (SELECT max(notification_id) FROM " + EVENTS_TABLE + ") + 5)", sequence)
    store.readings(2, start=100)
    store.project()
    assert store.verify().intact
    gap = positions(store)[-3] + 2
    store.sql(
        f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state, notification_id) "
        f"SELECT originator_id, originator_version + 1000, topic, state, %s FROM {EVENTS_TABLE} "
        f"WHERE notification_id = %s",
        gap, positions(store)[1],
    )  # fmt: skip
    problem = store.verify().problem
    assert problem is not None and (problem.position, problem.kind) == (gap, "inserted")


def test_events_not_yet_chained_are_counted_not_judged(store: AuditedStore) -> None:
    store.readings(3, start=50)
    result = store.verify()
    assert result.intact and result.unchained == 3


def test_verify_prints_a_summary_when_intact_and_names_the_position_when_not(
    store: AuditedStore, capsys: pytest.CaptureFixture[str]
) -> None:
    stderr = io.StringIO()
    assert run_verify(store.url, stderr).intact
    assert "intact:" in capsys.readouterr().out
    target = positions(store)[2]
    store.sql(f"UPDATE {EVENTS_TABLE} SET state = state || '\\x20'::bytea WHERE notification_id = %s", target)
    stderr = io.StringIO()
    assert not run_verify(store.url, stderr).intact
    assert f"position {target} changed" in stderr.getvalue()


def test_the_command_exits_1_naming_the_tampered_position(store: AuditedStore, nats_url: str, tmp_path: Path) -> None:
    target = positions(store)[5]
    store.sql(
        f"UPDATE {EVENTS_TABLE} SET state = set_byte(state, 30, get_byte(state, 30) # 4) WHERE notification_id = %s",
        target,
    )
    env = {**os.environ, "DATABASE_URL": store.url, "NATS_URL": nats_url, "WATTLEDGER_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "infra.cli", "audit", "verify"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"position {target} changed" in done.stderr

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infra.cli", *args], env=env, capture_output=True,
                              text=True, timeout=90, check=False)  # fmt: skip

    refused = cli("project", "--rebuild", "all")
    assert refused.returncode == 1, refused.stderr
    assert f"position {target} changed" in refused.stderr and "nothing rebuilt" in refused.stderr
    assert store.verify().problem is not None and store.verify().problem.position == target  # type: ignore[union-attr]
