"""A backup made through the API, restored through the API into a new database, served by a new process:
the same devices, users, history and costs, the same chain head, the administrator signs in with the same
password and a fresh two-factor code, and a wrong code is still refused."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import psycopg
import pyotp
import pytest
from psycopg import sql

from adapters.bus import StreamConfig
from api.app import create_app
from domain.readings import DeviceSnapshot
from infra.bootstrap import Runtime, open_runtime
from infra.settings import Settings
from projections.chain import chain_head_sync
from tests.harness import ADMIN, ADMIN_PASSWORD, background, http_client, log_in
from tests.kit import ManualClock, seed_device

PASSPHRASE = "a passphrase for the round trip"
T0 = datetime(2026, 3, 7, 0, 0, tzinfo=timezone.utc)
PLUG = DeviceSnapshot(
    alias="dryer", model="HS110", device_type="plug", mac="AA:00", firmware="1", is_on=True, has_emeter=True,
    power_w=0.0, total_wh=0.0,
)  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 8, 12, 0, tzinfo=timezone.utc))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _named(database_url: str, name: str) -> str:
    parts = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(database_url).items()}
    return psycopg.conninfo.make_conninfo(**{**parts, "dbname": name})


def _hash_at(database_url: str, position: int) -> str | None:
    with psycopg.connect(database_url) as conn:
        head = chain_head_sync(conn, position)
    return head.hash if head is not None and head.position == position else None


async def _metered_history(client: httpx.AsyncClient, device_id: uuid.UUID) -> None:
    """Two hours of one-minute readings (idle, then 600 W) and a price, so history and costs have figures."""
    readings = [{"timestamp": _iso(T0 + timedelta(minutes=n)), "power_w": 0.0 if n < 60 else 600.0,
                 "total_wh": max(0, n - 60) * 10.0} for n in range(121)]  # fmt: skip
    rate = await client.post("/api/rates", json={
        "rate_type": "simple", "currency": "EUR", "rate_structure": {"rate_per_kwh": 0.25},
        "effective_from": "2026-01-01T00:00:00Z",
    })  # fmt: skip
    assert rate.status_code == 201, rate.text
    imported = await client.post(f"/api/devices/{device_id}/readings", json={"readings": readings})
    assert imported.status_code == 200 and imported.json()["recorded"] == 121, imported.text


async def _answers(http: httpx.AsyncClient, device_id: uuid.UUID) -> dict[str, Any]:
    history = await http.get(f"/api/device/{device_id}/history", params={
        "start_time": _iso(T0), "end_time": _iso(T0 + timedelta(hours=3)), "aggregation": "hourly",
    })  # fmt: skip
    costs = await http.get("/api/costs", params={"start_date": "2026-03-01", "end_date": "2026-03-08"})
    assert history.status_code == costs.status_code == 200, (history.text, costs.text)
    return {
        "devices": (await http.get("/api/devices")).json(), "users": (await http.get("/api/users")).json(),
        "head": (await http.get("/api/audit/head")).json(), "history": history.json()["data"],
        "costs": costs.json(),
    }  # fmt: skip


async def _enable_two_factor(client: httpx.AsyncClient, clock: ManualClock) -> pyotp.TOTP:
    started = await client.post("/api/auth/2fa/setup", json={"current_password": ADMIN_PASSWORD})
    assert started.status_code == 200, started.text
    totp = pyotp.TOTP(started.json()["secret"])
    verified = await client.post("/api/auth/2fa/verify", json={"token": totp.at(clock.now())})
    assert verified.status_code == 200 and verified.json()["enabled"] is True, verified.text
    return totp


def _not_a_code_of(totp: pyotp.TOTP, moment: datetime) -> str:
    near = {totp.at(moment + timedelta(seconds=s)) for s in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in near)


async def test_restored_database_serves_the_same_answers(
    runtime: Runtime, client: httpx.AsyncClient, viewer: httpx.AsyncClient, devices: list[str],
    settings: Settings, database_url: str, nats_url: str, tmp_path: Path, clock: ManualClock,
) -> None:  # fmt: skip
    runtime.identity.clock = clock
    metered = seed_device(runtime.app, "10.9.0.1", PLUG, measured_at=T0 - timedelta(days=1))
    async with background(runtime, poll=False):
        await _metered_history(client, metered)
    totp = await _enable_two_factor(client, clock)
    await asyncio.to_thread(runtime.engine.catch_up_all)
    assert (await viewer.get("/api/backups")).status_code == 403
    created = await client.post("/api/backups/create", json={"passphrase": PASSPHRASE, "compression": "fast"})
    assert created.status_code == 201, created.text
    entry = created.json()
    before = await _answers(client, metered)
    assert [u["totp_enabled"] for u in before["users"] if u["username"] == ADMIN] == [True]
    assert sum(p["energy_kwh"] for p in before["history"]) == pytest.approx(0.6) and before["costs"]["devices"]
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
            second.clock = second.identity.clock = clock
            async with http_client(create_app(second.services())) as http:
                clock.advance(seconds=60)
                account = {"username": ADMIN, "password": ADMIN_PASSWORD}
                without = await http.post("/api/auth/login", json=account)
                assert without.status_code == 401 and without.json()["error_code"] == "TOTP_REQUIRED"
                wrong = await http.post("/api/auth/login",
                                        json={**account, "totp_code": _not_a_code_of(totp, clock.now())})
                assert wrong.status_code == 401 and wrong.json()["error_code"] == "INVALID_TOTP_CODE"
                signed_in = await log_in(http, ADMIN, ADMIN_PASSWORD, totp_code=totp.at(clock.now()))
                http.headers["Authorization"] = f"Bearer {signed_in.access_token}"
                after = await _answers(http, metered)
                for answer in ("devices", "users", "history", "costs"):
                    assert after[answer] == before[answer], answer
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
