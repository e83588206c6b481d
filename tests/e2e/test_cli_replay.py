"""`wattledger project --rebuild NAME|all [--verify]` on a history made through the API while projectors ran."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import UUID

import httpx
import psycopg

from adapters.bus import StreamConfig
from adapters.emulator import EmulatorFleet
from domain.commands import RenameDevice
from infra.bootstrap import Runtime
from projections.tables import READ_SCHEMA
from tests.harness import ADMIN_PASSWORD, background, cli_env, wattledger


async def make_history(client: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet) -> list[str]:
    """Devices, polls, a rename, a removal, a user, a key and a data export, projected live as they happen."""
    async with background(runtime, poll=True):
        ids = []
        for address in fleet.addresses[:3]:
            added = await client.post("/api/devices/manual", json={"ip": address})
            assert added.status_code == 201, added.text
            ids.append(added.json()["device_id"])
        await runtime.handlers().rename_device(RenameDevice(device_id=UUID(ids[0]), alias="Hall", actor="test"))
        assert (await client.delete(f"/api/devices/{ids[2]}")).status_code == 200
        user = await client.post("/api/users", json={"username": "olga", "password": "an operator passphrase",
                                                     "role": "operator"})
        assert user.status_code == 201, user.text
        key = await client.post("/api/keys", json={"name": "panel", "current_password": ADMIN_PASSWORD})
        assert key.status_code == 201, key.text
        export = await client.post("/api/exports/create", json={
            "devices": [ids[0]], "date_range": {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
        })
        assert export.status_code == 201, export.text
        await runtime.data_exports().wait(UUID(export.json()["export_id"]))
        await asyncio.sleep(1.5)
    await asyncio.to_thread(runtime.engine.catch_up_all)
    return ids


async def test_every_read_model_projected_live_equals_its_replay_and_the_cli_says_so(
    client: httpx.AsyncClient, runtime: Runtime, fleet: EmulatorFleet, database_url: str, nats_url: str,
    stream_config: StreamConfig, tmp_path: Path,
) -> None:
    ids = await make_history(client, runtime, fleet)
    names = list(runtime.engine.projectors)
    assert {"devices", "identity", "exports"} <= set(names)
    assert await asyncio.to_thread(runtime.engine.verify, names) == []

    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    verified = await asyncio.to_thread(wattledger, "project", "--verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert "identical" in verified.stderr and verified.stdout == ""

    rebuilt = await asyncio.to_thread(wattledger, "project", "--rebuild", "all", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"rebuilt {', '.join(names)}:" in rebuilt.stderr and "events/s" in rebuilt.stderr
    assert "\r" not in rebuilt.stderr, "no bar is drawn when stderr is not a terminal"

    with psycopg.connect(database_url) as conn:
        conn.execute(f"UPDATE {READ_SCHEMA}.devices SET alias = 'Tampered' WHERE device_id = %s", (ids[1],))
    differs = await asyncio.to_thread(wattledger, "project", "--rebuild", "devices", "--verify", env=env)
    assert differs.returncode == 1, differs.stderr
    assert differs.stdout.splitlines() == [
        f"devices devices device_id={ids[1]}: changed alias live 'Tampered' rebuilt "
        f"{differs.stdout.split('rebuilt ', 1)[1].strip()}"
    ]
    assert "1 rows differ" in differs.stderr

    fixed = await asyncio.to_thread(wattledger, "project", "--rebuild", "devices", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert await asyncio.to_thread(runtime.engine.verify, ["devices"]) == []


def test_an_unknown_read_model_is_refused_naming_the_known_ones(
    database_url: str, nats_url: str, stream_config: StreamConfig, tmp_path: Path
) -> None:
    result = wattledger("project", "--rebuild", "nonsense", env=cli_env(database_url, nats_url, stream_config,
                                                                         tmp_path))
    assert result.returncode == 2
    assert "unknown read model 'nonsense'" in result.stderr and "devices" in result.stderr
