"""The hash chain against a real PostgreSQL: edits behind the system's back are found and named."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.history import EVENTS_TABLE, StoredRecord
from infra.audit_cli import run_verify
from projections.chain import CHAIN, GENESIS, link
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


def test_an_untouched_history_verifies_and_every_link_hashes_its_predecessor(store: AuditedStore) -> None:
    result = store.verify()
    stored = positions(store)
    assert result.intact and result.checked == len(stored) and result.unchained == 0
    chain = store.sql(f"SELECT position, hash FROM {CHAIN.name} ORDER BY position")
    assert [p for p, _ in chain] == stored
    rows = store.sql(f"SELECT notification_id, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} "
                     f"ORDER BY notification_id")  # fmt: skip
    previous = GENESIS
    for (position, digest), row in zip(chain, rows, strict=True):
        record = StoredRecord(int(row[0]), row[1], int(row[2]), str(row[3]), bytes(row[4]))
        previous = link(previous, record)
        assert previous.hex() == digest, position


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
