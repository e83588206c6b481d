"""Processes that open the event store at the same moment, on a database where it is new."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from adapters.eventstore import WattLedger, store_env

OPENERS = 6


@pytest.fixture
def fresh_schema(database_url: str) -> Iterator[str]:
    schema = f"wl_setup_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_stores_opened_at_once_on_a_new_database_all_open(database_url: str, fresh_schema: str) -> None:
    """Each opening creates the library's tables and replaces its functions; together they take turns
    instead of failing with "tuple concurrently updated"."""
    env = {**store_env(database_url, pool_size=1), "POSTGRES_SCHEMA": fresh_schema}
    start = threading.Barrier(OPENERS)
    opened: list[WattLedger] = []
    failures: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(WattLedger(env))
        except BaseException as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(exc)

    for _ in range(3):  # the race is a matter of timing: a few rounds make it show without the lock
        threads = [threading.Thread(target=open_one) for _ in range(OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        for app in opened:
            app.close()
        assert len(opened) == OPENERS
        opened.clear()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {fresh_schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {fresh_schema}")
