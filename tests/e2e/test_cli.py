"""The `wattledger` command as a user runs it: a real process, real servers, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import nats
import nats.js.errors
import psycopg

from adapters.bus import StreamConfig
from adapters.eventstore import WattLedger, ensure_events_schema, store_env
from domain.handlers import POLLS_PER_SAVE
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot
from tests.harness import cli_env, free_port, wattledger


def test_invalid_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    result = wattledger("serve", env={**os.environ, "WATTLEDGER_PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wattledger: invalid WATTLEDGER_PORT='eighty': must be a number from 1 to 65535"
    ]


def test_serve_demo_shows_live_devices_then_stops_cleanly_and_rebuild_gives_same_rows(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "--demo", "--port", str(port), "--polling-interval", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    devices: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if http.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            assert http.get("/api/devices").status_code == 401
            assert http.get("/api/auth/setup-required").json() == {"setup_required": True}
            account = {"username": "admin", "password": "A demo passphrase"}
            assert http.post("/api/auth/setup", json=account).status_code == 201
            login = http.post("/api/auth/login", json=account)
            assert login.status_code == 200, login.text
            http.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            while time.monotonic() < deadline and server.poll() is None:
                devices = http.get("/api/devices").json()
                if len(devices) == 5 and all(d["last_seen"] != d["added_at"] for d in devices):
                    break
                time.sleep(0.5)
            models = sorted(str(d["model"]) for d in devices)
            assert models == ["HS100", "HS110", "HS300", "KP115", "KP303"], server.poll()
            assert http.get("/schema/openapi.json").status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
        print(output)
    assert server.returncode == 0, output
    assert "Traceback" not in output

    rebuilt = wattledger("project", "--rebuild", "devices", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt devices:" in rebuilt.stderr


def test_relay_killed_mid_stream_and_restarted_leaves_every_event_once(
    tmp_path: Path, database_url: str, nats_url: str, stream_config: StreamConfig
) -> None:
    total = store_readings(database_url, devices=1000, days=20)
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    relay = subprocess.Popen([sys.executable, "-m", "infra.cli", "relay"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while stream_messages(nats_url, stream_config.name) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        relay.kill()
        relay.wait(timeout=10)
    published_before_kill = stream_messages(nats_url, stream_config.name)
    assert published_before_kill > 0
    print(f"published before kill: {published_before_kill} of {total}")

    relay = subprocess.Popen([sys.executable, "-m", "infra.cli", "relay"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while stream_messages(nats_url, stream_config.name) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        relay.send_signal(signal.SIGINT)
        relay.wait(timeout=30)
    assert relay.returncode == 0
    assert stream_messages(nats_url, stream_config.name) == total
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT position FROM wl_ops.relay_position WHERE stream_name = %s", (stream_config.name,)
        ).fetchone()
    assert row is not None and row[0] == total


def store_readings(database_url: str, *, devices: int, days: int) -> int:
    """Many events fast: one new readings stream per device and day, saved in bounded parts."""
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    try:
        start = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
        snapshot = DeviceSnapshot(alias="p", model="HS110", device_type="plug", mac="m", firmware="1", is_on=True,
                                  has_emeter=True, power_w=5.0, total_wh=1.0)
        for day in range(days):
            at = start + timedelta(days=day)
            meters = []
            for device in range(devices):
                meter = MeterDay(device_id=uuid.UUID(int=device + 1), day=at.date().isoformat())
                meter.record(at, snapshot, actor="test")
                meters.append(meter)
            for first in range(0, len(meters), POLLS_PER_SAVE):
                app.save(*meters[first : first + POLLS_PER_SAVE])
        return app.recorder.max_notification_id() or 0
    finally:
        app.close()


def stream_messages(nats_url: str, name: str) -> int:
    async def count() -> int:
        nc = await nats.connect(nats_url, allow_reconnect=False)
        try:
            return int((await nc.jetstream().stream_info(name)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())
