"""`wattledger device add|rename|remove` runs the same handlers as the API, as a CLI user."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg

from adapters.bus import StreamConfig
from adapters.emulator import EmulatorFleet
from tests.harness import cli_env, free_port, wattledger


def events(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT topic, state FROM wl_events.wattledger_events ORDER BY notification_id").fetchall()
    # Readings are stored compact (binary); device events are JSON text.
    return [(topic.rsplit(".", 1)[-1], bytes(state).decode(errors="replace")) for topic, state in rows]


async def test_device_commands_from_the_cli_store_events_with_the_cli_actor(
    database_url: str, nats_url: str, stream_config: StreamConfig, tmp_path: Path
) -> None:
    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    async with EmulatorFleet(["HS110"], host="127.0.0.1", port=0, seed=3) as fleet:
        address = fleet.addresses[0]
        added = await asyncio.to_thread(wattledger, "device", "add", address, "--alias", "Heater", env=env)
        assert added.returncode == 0, added.stderr
        result = json.loads(added.stdout.strip().splitlines()[-1])
        renamed = await asyncio.to_thread(wattledger, "device", "rename", address, "Radiator", env=env)
        again = await asyncio.to_thread(wattledger, "device", "add", address, env=env)
        removed = await asyncio.to_thread(wattledger, "device", "remove", result["device_id"], env=env)
        unknown = await asyncio.to_thread(wattledger, "device", "remove", "127.0.0.9", env=env)
        closed = await asyncio.to_thread(wattledger, "device", "add", f"127.0.0.1:{free_port()}", env=env)
    assert renamed.returncode == 0 and removed.returncode == 0
    assert closed.returncode == 1
    assert "wattledger: no Kasa device answered at this address (DEVICE_UNREACHABLE)" in closed.stderr
    assert "devices.add_unreachable" in closed.stderr
    assert again.returncode == 1 and "DEVICE_EXISTS" in again.stderr
    assert unknown.returncode == 1 and "DEVICE_NOT_FOUND" in unknown.stderr
    stored = events(database_url)
    assert [name for name, _ in stored if name in {"Added", "Renamed", "Removed"}] == ["Added", "Renamed", "Removed"]
    assert all('"actor":"cli:' in state for name, state in stored if name in {"Added", "Renamed", "Removed"})
