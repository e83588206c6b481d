"""The embedded NATS with authorization: each role may do its work and nothing that would let it
forge events or read others' credentials (a real nats-server, a free port, a temporary data dir)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from adapters.bus import StreamConfig, ensure_stream
from adapters.contract import decode_envelope
from adapters.executor import DURABLE as EXECUTOR_CONSUMER
from domain.commands import PollResult
from infra.bootstrap import open_runtime
from infra.embedded import EmbeddedNats, embedded_nats_url, embedded_servers
from infra.nats_auth import APP, COMMANDER, READER, RELAY, ROLES, Credential, load_credentials, with_credential
from infra.settings import Settings
from infra.tail import run_tail
from tests.harness import free_port, metered_plug
from tests.kit import eventually, seed_device, seed_polls

pytestmark = pytest.mark.embedded

T0 = datetime(2026, 5, 1, tzinfo=timezone.utc)
STREAM = StreamConfig(name="WL_AUTH", subject_prefix="wlauth")
EVENTS = f"{STREAM.subject_prefix}.events"
COMMANDS = f"{STREAM.subject_prefix}.cmd"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nats-auth")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[EmbeddedNats]:
    nats_server = EmbeddedNats(data_dir, port=0, subject_prefix=STREAM.subject_prefix, stream=STREAM.name)
    nats_server.start()
    try:
        yield nats_server
    finally:
        nats_server.stop()


class Connection:
    """A client of one role, remembering the errors the server sent it."""

    def __init__(self, client: Client, errors: list[Exception]) -> None:
        self.nc = client
        self.js = client.jetstream()
        self.errors = errors

    async def refused(self, action: str, subject: str) -> None:
        """Wait until the server reports a permissions violation for `action` (publish, subscription) on `subject`."""
        wanted = f'permissions violation for {action} to "{subject.lower()}"'
        await eventually(lambda: any(wanted in str(error) for error in self.errors), within=5, every=0.02, what=wanted)


async def _connect(url: str) -> Connection:
    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        errors.append(exc)

    client = await nats.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=remember)
    return Connection(client, errors)


@pytest.fixture
async def as_role(server: EmbeddedNats) -> AsyncIterator[dict[str, Connection]]:
    """One connection per role, and the events stream (created by the app, as a runtime does)."""
    connections = {role: await _connect(server.url_for(role)) for role in ROLES}
    await ensure_stream(connections[APP].js, STREAM)
    try:
        yield connections
    finally:
        for connection in connections.values():
            await connection.nc.close()


async def _messages(connection: Connection) -> int:
    return (await connection.js.stream_info(STREAM.name)).state.messages


def test_credentials_are_generated_once_and_readable_by_the_owner_only(server: EmbeddedNats, data_dir: Path) -> None:
    for path in (server.credentials_file, server.config_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    credentials = load_credentials(server.credentials_file, create=False)
    assert set(credentials) == set(ROLES)
    assert len({c.password for c in credentials.values()}) == len(ROLES)

    again = EmbeddedNats(data_dir / "again", port=0)
    again.start()
    first = load_credentials(again.credentials_file, create=False)
    again.stop()
    again.start()
    try:
        assert load_credentials(again.credentials_file, create=False) == first
    finally:
        again.stop()


async def test_a_client_without_credentials_or_with_a_wrong_password_cannot_connect(server: EmbeddedNats) -> None:
    plain = "nats://" + server.url_for(RELAY).rpartition("@")[2]
    for url in (plain, with_credential(plain, Credential(user=RELAY, password="guessed"))):
        client = Client()
        try:
            with pytest.raises(nats.errors.Error) as refused:
                await client.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        finally:
            await client.close()
        assert "authorization" in str(refused.value).lower(), url


async def test_only_the_relay_role_publishes_events(as_role: dict[str, Connection]) -> None:
    ack = await as_role[RELAY].js.publish(f"{EVENTS}.meter.m1.ReadingRecorded", b"{}")
    assert ack.stream == STREAM.name
    before = await _messages(as_role[APP])

    for role in (APP, READER, COMMANDER):
        subject = f"{EVENTS}.meter.m1.ReadingRecorded"
        await as_role[role].nc.publish(subject, b'{"power_w": 98765}')
        await as_role[role].nc.flush()
        await as_role[role].refused("publish", subject)

    assert await _messages(as_role[APP]) == before


async def test_a_reader_reads_events_through_consumers_of_its_own(as_role: dict[str, Connection]) -> None:
    reader = as_role[READER]
    await as_role[RELAY].js.publish(f"{EVENTS}.device.d1.Renamed", b"renamed")

    pull = await reader.js.pull_subscribe(f"{EVENTS}.device.*.Renamed", durable="renames", stream=STREAM.name)
    messages = await pull.fetch(1, timeout=5)
    assert [m.data for m in messages] == [b"renamed"]
    await messages[0].ack()
    ordered = await reader.js.subscribe(f"{EVENTS}.>", stream=STREAM.name, ordered_consumer=True,
                                        deliver_policy=api.DeliverPolicy.LAST,
                                        config=api.ConsumerConfig(name=f"ordered-{uuid.uuid4().hex}"))  # fmt: skip
    assert (await ordered.next_msg(timeout=5)).data == b"renamed"
    await ordered.unsubscribe()
    assert (await reader.js.stream_info(STREAM.name)).config.name == STREAM.name
    assert reader.errors == []


async def test_a_reader_cannot_change_the_stream_nor_the_executors_consumer(as_role: dict[str, Connection]) -> None:
    reader, before = as_role[READER], await _messages(as_role[APP])
    executor = f"{STREAM.name}.{EXECUTOR_CONSUMER}"
    for subject in (
        f"$JS.API.STREAM.DELETE.{STREAM.name}",
        f"$JS.API.STREAM.PURGE.{STREAM.name}",
        f"$JS.API.STREAM.UPDATE.{STREAM.name}",
        f"$JS.API.STREAM.MSG.DELETE.{STREAM.name}",
        # The nameless create takes its name from the body, so it could rewrite any consumer.
        f"$JS.API.CONSUMER.CREATE.{STREAM.name}",
        f"$JS.API.CONSUMER.CREATE.{executor}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{executor}",
        f"$JS.API.CONSUMER.DELETE.{executor}",
        f"$JS.API.CONSUMER.MSG.NEXT.{executor}",
        f"$JS.ACK.{executor}.1.1.1.1.0",
    ):
        await reader.nc.publish(subject, b"{}")
        await reader.nc.flush()
        await reader.refused("publish", subject)
    assert await _messages(as_role[APP]) == before


async def test_commands_and_their_credentials_reach_the_app_role_only(as_role: dict[str, Connection]) -> None:
    seen: list[Msg] = []

    async def respond(msg: Msg) -> None:
        seen.append(msg)
        await msg.respond(b'{"ok": true}')

    await as_role[APP].nc.subscribe(f"{COMMANDS}.device.*", cb=respond)
    await as_role[APP].nc.flush()
    eavesdroppers = {}
    for role in (READER, COMMANDER, RELAY):
        eavesdroppers[role] = await as_role[role].nc.subscribe(f"{COMMANDS}.>")
        await as_role[role].nc.flush()
        await as_role[role].refused("subscription", f"{COMMANDS}.>")

    headers = {"X-API-Key": "wl_live_read-write-key"}
    reply = await as_role[COMMANDER].nc.request(f"{COMMANDS}.device.add", b'{"ip": "127.0.0.9"}', headers=headers,
                                                timeout=5)  # fmt: skip
    assert reply.data == b'{"ok": true}'
    assert [m.headers for m in seen] == [headers]
    for role, subscription in eavesdroppers.items():
        await as_role[role].nc.flush()
        assert subscription.pending_msgs == 0, role

    await as_role[COMMANDER].nc.publish(f"{EVENTS}.command.c1.ControlRequested", b"{}")
    await as_role[COMMANDER].refused("publish", f"{EVENTS}.command.c1.ControlRequested")


async def test_a_runtime_on_the_authorized_server_stores_relays_and_a_reader_tails_the_events(
    server: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, stream_name=STREAM.name, subject_prefix=STREAM.subject_prefix,
                        rate_limits=False)  # fmt: skip
    reader = await _connect(server.url_for(READER))
    out, stop, ready = io.StringIO(), asyncio.Event(), asyncio.Event()
    try:
        async with open_runtime(settings, database_url, server.url_for(APP), relay_url=server.url_for(RELAY)) as rt:
            assert rt.relay is not None
            device = seed_device(rt.app, "127.0.0.41", metered_plug(1.0), measured_at=T0, alias="Kettle")
            assert await rt.relay.publish_pending() >= 2

            added = await reader.js.pull_subscribe(f"{EVENTS}.device.{device}.Added", durable=f"added-{device}",
                                                   stream=STREAM.name)  # fmt: skip
            [message] = await added.fetch(1, timeout=5)
            assert decode_envelope(message.data).originator_id == device

            tail = asyncio.create_task(run_tail(server.url_for(READER), STREAM, stop, device=str(device),
                                                as_json=True, out=out, ready=ready.set))  # fmt: skip
            await asyncio.wait_for(ready.wait(), timeout=10)
            seed_polls(rt.app, [PollResult(device_id=device, measured_at=T0 + timedelta(seconds=k),
                                           snapshot=metered_plug(40.0 + k)) for k in (1, 2)])  # fmt: skip
            await rt.relay.publish_pending()
            await eventually(lambda: out.getvalue().count("\n") >= 2, within=10, every=0.05, what="two lines printed")
            stop.set()
            await tail
    finally:
        stop.set()
        await reader.nc.close()
    powers = [msgspec.json.decode(line)["data"]["power_w"] for line in out.getvalue().splitlines()]
    assert powers == [41.0, 42.0]
    assert reader.errors == []


def test_credentials_go_into_urls_as_written_so_only_url_safe_ones_are_taken() -> None:
    url = with_credential("nats://a:1@h1:4222,nats://h2:4222", Credential(user="reader", password="s3cret-_x"))
    assert url == "nats://reader:s3cret-_x@h1:4222,nats://reader:s3cret-_x@h2:4222"
    with pytest.raises(ValueError):
        with_credential("nats://h:4222", Credential(user="reader", password="p@ss:word"))


def test_embedded_servers_hands_out_the_app_url_and_the_other_roles_from_the_data_dir(tmp_path: Path) -> None:
    given = "postgresql://wattledger@127.0.0.1:1/wattledger"
    with embedded_servers(tmp_path, database_url=given, nats_url=None, nats_port=0) as (database_url, nats_url):
        assert database_url == given
        credentials = load_credentials(tmp_path / "nats" / "credentials.json", create=False)
        assert f"//{APP}:{credentials[APP].password}@" in nats_url
        relay_url = embedded_nats_url(tmp_path, nats_url, RELAY)
        assert f"//{RELAY}:{credentials[RELAY].password}@" in relay_url
        assert relay_url.rpartition("@")[2] == nats_url.rpartition("@")[2]


async def test_embedded_servers_without_authorization_serves_any_client_as_the_tests_use_it(tmp_path: Path) -> None:
    with embedded_servers(tmp_path, database_url="postgresql://x@127.0.0.1:1/x", nats_url=None, nats_port=0,
                          nats_authorization=False) as (_, nats_url):  # fmt: skip
        assert "@" not in nats_url
        assert embedded_nats_url(tmp_path, nats_url, RELAY) == nats_url
        client = await nats.connect(nats_url, allow_reconnect=False)
        try:
            await client.jetstream().add_stream(name="ANY", subjects=["any.>"])
            assert (await client.jetstream().publish("any.thing", b"1")).seq == 1
        finally:
            await client.close()


def _reader_url(data_dir: Path) -> str | None:
    for ports in (data_dir / "nats").glob("nats-server_*.ports"):
        try:
            [url] = json.loads(ports.read_text())["nats"]
        except (OSError, ValueError):
            continue
        return embedded_nats_url(data_dir, str(url), READER)
    return None


async def _added_devices(reader_url: str, prefix: str, stream: str, wanted: int, deadline: float) -> int:
    client = await nats.connect(reader_url, allow_reconnect=False)
    try:
        while time.monotonic() < deadline:
            try:
                info = await client.jetstream().stream_info(stream, subjects_filter=f"{prefix}.events.device.*.Added")
            except nats.errors.Error:
                await asyncio.sleep(0.3)
                continue
            added = len(info.state.subjects or {})
            if added >= wanted:
                return added
            await asyncio.sleep(0.3)
        return 0
    finally:
        await client.close()


def test_serve_with_the_embedded_nats_relays_as_the_relay_and_logs_no_password(
    tmp_path: Path, database_url: str
) -> None:
    port, prefix, stream = free_port(), f"wla{uuid.uuid4().hex[:8]}", "WL_AUTH_CLI"
    env = {
        **{k: v for k, v in os.environ.items() if k != "NATS_URL"},
        "DATABASE_URL": database_url,
        "WATTLEDGER_DATA_DIR": str(tmp_path),
        "WATTLEDGER_EMBEDDED_NATS_PORT": "0",
        "WATTLEDGER_STREAM": stream,
        "WATTLEDGER_SUBJECT_PREFIX": prefix,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "--demo", "--port", str(port), "--polling-interval", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    added, health = 0, {}
    try:
        deadline = time.monotonic() + 60
        reader_url = None
        while reader_url is None and time.monotonic() < deadline and server.poll() is None:
            reader_url = _reader_url(tmp_path)
            time.sleep(0.2)
        assert reader_url is not None, server.poll()
        added = asyncio.run(_added_devices(reader_url, prefix, stream, 5, deadline))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    health = http.get("/api/health").json()
                except httpx.TransportError:
                    time.sleep(0.3)
                    continue
                if health.get("status") == "healthy" and (health.get("live") or {}).get("running"):
                    break
                time.sleep(0.3)
        shown = subprocess.run([sys.executable, "-m", "infra.cli", "nats-credentials"], env=env, capture_output=True,
                               text=True, timeout=60, check=False)  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert added == 5, output
    assert health.get("status") == "healthy", (health, output)
    assert shown.returncode == 0, shown.stderr
    credentials_file = Path(msgspec.json.decode(shown.stdout)["credentials_file"])
    assert credentials_file == (tmp_path / "nats" / "credentials.json").resolve()
    for credential in load_credentials(credentials_file, create=False).values():
        assert credential.password not in output and credential.password not in shown.stdout
    assert "permissions violation" not in output.lower(), output
