"""A backup made through the API, restored through the API into a new database, served by a new process:
the same devices and users, the same chain head, and the administrator signs in with the same password."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import psycopg
from psycopg import sql

from adapters.bus import StreamConfig
from api.app import create_app
from infra.bootstrap import Runtime, open_runtime
from infra.settings import Settings
from tests.harness import ADMIN, ADMIN_PASSWORD, http_client, log_in

PASSPHRASE = "a passphrase for the round trip"


def _named(database_url: str, name: str) -> str:
    parts = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(database_url).items()}
    return psycopg.conninfo.make_conninfo(**{**parts, "dbname": name})


def _hash_at(database_url: str, position: int) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT hash FROM wl_read.audit_chain WHERE position = %s", (position,)).fetchone()
    return str(row[0]) if row else None


async def _answers(http: httpx.AsyncClient) -> dict[str, Any]:
    devices = (await http.get("/api/devices")).json()
    users = (await http.get("/api/users")).json()
    head = (await http.get("/api/audit/head")).json()
    return {"devices": devices, "users": users, "head": head}


async def test_restored_database_serves_the_same_answers(
    runtime: Runtime, client: httpx.AsyncClient, viewer: httpx.AsyncClient, devices: list[str],
    settings: Settings, database_url: str, nats_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    await asyncio.to_thread(runtime.engine.catch_up_all)
    assert (await viewer.get("/api/backups")).status_code == 403
    created = await client.post("/api/backups/create", json={"passphrase": PASSPHRASE, "compression": "fast"})
    assert created.status_code == 201, created.text
    entry = created.json()
    before = await _answers(client)
    archive = (await client.get(f"/api/backups/{entry['filename']}/download")).content
    name = f"wl_test_round_{uuid.uuid4().hex[:8]}"
    stream = StreamConfig(name=f"WLR_{uuid.uuid4().hex[:8].upper()}", subject_prefix=f"wlr{uuid.uuid4().hex[:8]}")
    try:
        restored = await client.post("/api/backups/restore", files={"file": ("backup.wlbackup", archive)},
                                     data={"passphrase": PASSPHRASE, "options": msgspec.json.encode(
                                         {"database": name}).decode()})  # fmt: skip
        assert restored.status_code == 200, restored.text
        assert restored.json()["events"] == entry["event_count"]
        moved = msgspec.structs.replace(settings, data_dir=tmp_path / "new-machine", stream_name=stream.name,
                                        subject_prefix=stream.subject_prefix)  # fmt: skip
        async with open_runtime(moved, _named(database_url, name), nats_url) as second:
            async with http_client(create_app(second.services())) as http:
                signed_in = await log_in(http, ADMIN, ADMIN_PASSWORD)
                http.headers["Authorization"] = f"Bearer {signed_in.access_token}"
                after = await _answers(http)
                assert after["devices"] == before["devices"]
                assert after["users"] == before["users"]
                link = entry["chain_head"]
                assert link is not None and after["head"]["position"] > link["position"]
                assert _hash_at(database_url, link["position"]) == _hash_at(_named(database_url, name),
                                                                             link["position"]) == link["hash"]
                # The old session's token, signed with the restored key, is still accepted.
                old = await http.get("/api/devices", headers={"Authorization": client.headers["Authorization"]})
                assert old.status_code == 200
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(stream.name)
        except Exception:
            pass
        await nc.close()
