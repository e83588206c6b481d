"""Embedded PostgreSQL and NATS run as real processes, serve clients and stop when told."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from infra.embedded import EmbeddedNats, EmbeddedPostgres, embedded_servers

pytestmark = pytest.mark.embedded


def _accepts_connections(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path, port=0)
    yield server
    server.stop()


def test_embedded_postgres_serves_sql_until_stopped(postgres: EmbeddedPostgres) -> None:
    url = postgres.start()

    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    params = conninfo_to_dict(url)
    assert Path(str(params["host"])).is_absolute()
    # libpq drops the empty password from the parsed form: absent means none.
    assert params.get("password", "") == ""
    assert (params["port"], params["user"], params["dbname"]) == ("5432", "postgres", "postgres")

    postgres.stop()
    postgres.stop()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_embedded_postgres_keeps_tables_across_restart(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path)
    try:
        with psycopg.connect(first.start()) as conn:
            conn.execute("create table meter (id text primary key)")
            conn.execute("insert into meter values ('m-1')")
    finally:
        first.stop()

    second = EmbeddedPostgres(tmp_path)
    try:
        with psycopg.connect(second.start()) as conn:
            assert conn.execute("select id from meter").fetchall() == [("m-1",)]
    finally:
        second.stop()
    assert (tmp_path / "postgres" / "PG_VERSION").is_file()


async def test_embedded_nats_on_port_zero_acknowledges_jetstream_publish_until_stopped(
    nats_server: EmbeddedNats,
) -> None:
    url = nats_server.start()
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname) == ("nats", "127.0.0.1")
    assert parts.port not in (None, 0)

    client = await nats.connect(url, allow_reconnect=False)
    try:
        js = client.jetstream()
        await js.add_stream(name="READINGS", subjects=["readings.>"])
        ack = await js.publish("readings.m-1", b"42.0")
    finally:
        await client.close()
    assert (ack.stream, ack.seq) == ("READINGS", 1)
    assert nats_server.log_file.is_file()

    nats_server.stop()
    nats_server.stop()

    assert not _accepts_connections(url)


async def test_embedded_nats_keeps_streams_across_restart(tmp_path: Path) -> None:
    for expected_messages in (1, 2):
        server = EmbeddedNats(tmp_path, port=0)
        try:
            client = await nats.connect(server.start(), allow_reconnect=False)
            try:
                js = client.jetstream()
                await js.add_stream(name="READINGS", subjects=["readings.>"])
                await js.publish("readings.m-1", b"42.0")
                info = await js.stream_info("READINGS")
            finally:
                await client.close()
        finally:
            server.stop()
        assert info.state.messages == expected_messages


def test_embedded_servers_passes_given_urls_through_and_starts_nothing(tmp_path: Path) -> None:
    database_url = "postgresql://app:secret@127.0.0.1:1/wattledger"
    nats_url = "nats://127.0.0.1:1"

    with embedded_servers(tmp_path, database_url=database_url, nats_url=nats_url) as urls:
        assert urls == (database_url, nats_url)

    assert list(tmp_path.iterdir()) == []


def test_embedded_servers_stops_what_it_started_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with embedded_servers(tmp_path, database_url=None, nats_url=None, nats_port=0) as urls:
            database_url, nats_url = urls
            assert _postgres_answers(database_url)
            assert _accepts_connections(nats_url)
            raise RuntimeError("boom")

    assert not _postgres_answers(database_url)
    assert not _accepts_connections(nats_url)
