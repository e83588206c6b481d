"""The relay's position tables against a real PostgreSQL: where they live and how they got there."""

from __future__ import annotations

from typing import Any

import psycopg

from adapters.bus import StreamConfig
from adapters.relay import Relay
from adapters.relay_positions import relay_status
from adapters.schemas import OPS_SCHEMA

STREAM = StreamConfig(name="WL_POSITIONS_TEST")


def former_tables(database_url: str, *, position: int, rejected: list[int]) -> None:
    """The relay's tables as an earlier release left them: in the read models' schema."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS wl_read")
        conn.execute("CREATE TABLE wl_read.relay_position (stream_name text PRIMARY KEY, position bigint NOT NULL, "
                     "updated_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        conn.execute("CREATE TABLE wl_read.relay_rejected (stream_name text NOT NULL, notification_id bigint NOT NULL, "
                     "subject text NOT NULL, error text NOT NULL, rejected_at timestamptz NOT NULL DEFAULT now(), "
                     "PRIMARY KEY (stream_name, notification_id))")  # fmt: skip
        conn.execute("INSERT INTO wl_read.relay_position (stream_name, position) VALUES (%s, %s)", (STREAM.name, position))
        for notification_id in rejected:
            conn.execute("INSERT INTO wl_read.relay_rejected (stream_name, notification_id, subject, error) "
                         "VALUES (%s, %s, 'wl.events.device.x.Added', 'too large')", (STREAM.name, notification_id))  # fmt: skip


def schemas_of(database_url: str) -> dict[str, list[str]]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT tablename, schemaname FROM pg_tables WHERE tablename IN ('relay_position', 'relay_rejected') "
            "ORDER BY tablename, schemaname"
        )
        found: dict[str, list[str]] = {}
        for table, schema in cur.fetchall():
            found.setdefault(table, []).append(schema)
        return found


def relay(database_url: str) -> Relay:
    # Its position tables only: no event store and no JetStream are touched.
    return Relay(None, None, database_url=database_url, stream=STREAM, listen=False)  # type: ignore[arg-type]


async def status_of(database_url: str) -> Any:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await relay_status(conn, STREAM.name, 100)


async def test_a_new_relay_keeps_its_position_in_the_operations_schema(database_url: str) -> None:
    async with relay(database_url) as fresh:
        assert await fresh.position() == 0
        await fresh.reset(12)
    assert schemas_of(database_url) == {"relay_position": [OPS_SCHEMA], "relay_rejected": [OPS_SCHEMA]}
    assert (await status_of(database_url)).position == 12


async def test_a_position_left_in_the_read_schema_moves_with_its_rows_once(database_url: str) -> None:
    former_tables(database_url, position=41, rejected=[7, 9])
    before = await status_of(database_url)
    assert (before.position, before.rejected) == (41, 2)

    for _ in range(2):
        async with relay(database_url) as upgraded:
            assert await upgraded.position() == 41
            status = await status_of(database_url)
            assert (status.position, status.rejected) == (41, 2)
            assert [r.notification_id for r in status.last_rejections] == [9, 7]
    assert schemas_of(database_url) == {"relay_position": [OPS_SCHEMA], "relay_rejected": [OPS_SCHEMA]}


async def test_a_former_table_found_beside_the_moved_one_is_left_and_not_read(database_url: str) -> None:
    async with relay(database_url) as current:
        await current.reset(30)
    former_tables(database_url, position=5, rejected=[3])
    async with relay(database_url) as again:
        assert await again.position() == 30
        assert (await status_of(database_url)).rejected == 0
    assert schemas_of(database_url) == {"relay_position": [OPS_SCHEMA, "wl_read"], "relay_rejected": [OPS_SCHEMA, "wl_read"]}
