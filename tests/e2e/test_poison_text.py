"""One stored event never stops a read model, and revocation never waits for one.

Free text a read model could not hold is refused at every entry point; an event that got into
the store anyway (older data) is quarantined and shown, and `project --retry` applies it once it
can be; authentication reads the event store, so a revocation is in force at once even while
the identity projector is stuck.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from adapters.bus import StreamConfig, connect_nats
from adapters.emulator import EmulatorFleet
from api.pending import PENDING_HEADER
from domain.access import Scope
from domain.identity import ApiKey, user_id_for
from domain.identity_requests import NewKey, StepUp
from domain.identity_rules import api_key_text
from domain.text import refused_character
from infra import replay
from infra.bootstrap import Runtime
from projections.tracking import QUARANTINE, TRACKING
from tests.harness import (
    ADMIN_PASSWORD,
    VIEWER_PASSWORD,
    SignedIn,
    background,
    bearer,
    cli_env,
    error_of,
    log_in,
    wattledger,
)

NASTY = ["a\x00b", "\x1b[31mred", "line\u2028break", "para\u2029", "evil\u202etxt.exe", "iso\u2066late\u2069",
         "tab\there", "cr\rlf\n", "del\x7f", "bom\ufeff"]  # fmt: skip
PROJECTION_WAIT_S = 30.0


def head(runtime: Runtime) -> int:
    return runtime.app.recorder.max_notification_id() or 0


async def all_projected(runtime: Runtime, timeout: float = PROJECTION_WAIT_S) -> dict[str, int]:
    """Wait (bounded) until every read model is at the log's head; their lags then."""
    deadline = time.monotonic() + timeout
    while True:
        newest = head(runtime)
        async with runtime.read_pool.connection() as conn:
            cur = await conn.execute(f"SELECT name, position FROM {TRACKING}")
            lags = {name: newest - position for name, position in await cur.fetchall()}
        if all(lag <= 0 for lag in lags.values()) or time.monotonic() >= deadline:
            return lags
        await asyncio.sleep(0.05)


async def quarantined(runtime: Runtime) -> list[tuple[str, int]]:
    async with runtime.read_pool.connection() as conn:
        cur = await conn.execute(f"SELECT projector, position FROM {QUARANTINE} ORDER BY projector, position")
        return [(name, position) for name, position in await cur.fetchall()]


@pytest.fixture
async def projecting(runtime: Runtime) -> AsyncIterator[None]:
    async with background(runtime, poll=False):
        yield


# ---- the edge refuses ----


async def test_a_key_named_with_nul_is_refused_and_nothing_is_stored(
    runtime: Runtime, viewer: httpx.AsyncClient
) -> None:
    before = head(runtime)
    refused = await viewer.post("/api/keys", json={"name": "a\u0000b"})
    assert error_of(refused, 400) == "INVALID_TEXT"
    assert "U+0000" in refused.json()["detail"] and "name" in refused.json()["detail"]
    for name in NASTY:
        assert error_of(await viewer.post("/api/keys", json={"name": name}), 400) == "INVALID_TEXT", name
    assert head(runtime) == before
    kept = await viewer.post("/api/keys", json={"name": "Küche 💡 \u200d ok", "current_password": VIEWER_PASSWORD})
    assert kept.status_code == 201, kept.text


async def test_every_free_text_field_takes_the_same_rule_and_stores_nothing_it_refuses(
    projecting: None, runtime: Runtime, client: httpx.AsyncClient, admin: tuple[SignedIn, httpx.AsyncClient],
    fleet: EmulatorFleet,
) -> None:
    user_id = admin[0].user_id
    tou = [{"start_hour": 0, "end_hour": 24, "rate": 0.2, "label": "peak\u2028"}]
    added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
    assert added.status_code in (201, 202), added.text
    device = added.json()["device_id"]
    assert all(lag == 0 for lag in (await all_projected(runtime)).values())
    before = head(runtime)
    for method, path, body in [
        ("POST", "/api/users", {"username": "ann", "password": "Ann-passphrase-42", "full_name": "Ann\x00"}),
        ("POST", "/api/users", {"username": "ann", "password": "Ann-passphrase-42", "email": "a\x00@b.c"}),
        ("PATCH", f"/api/users/{user_id}", {"full_name": "Root \u202eadmin"}),
        ("PATCH", f"/api/users/{user_id}", {"email": "root@\u2066example.org"}),
        ("POST", "/api/devices/manual", {"ip": "127.0.0.1:1", "alias": "Lamp\x00"}),
        ("POST", "/api/rates", {"rate_type": "time_of_use", "time_of_use_rates": tou}),
        ("POST", "/api/compliance/exports", {"actor": "user:\x00"}),
    ]:
        response = await client.request(method, path, json=body)
        assert error_of(response, 400) == "INVALID_TEXT", (path, body)
    renamed = await client.patch(f"/api/device/{device}", json={"alias": "Lamp\u2029"})
    assert error_of(renamed, 400) == "INVALID_TEXT"
    control = await client.post(f"/api/device/{device}/control", json={"action": "on"},
                                headers={"Idempotency-Key": "k\x7f"})  # fmt: skip
    assert error_of(control, 400) == "INVALID_TEXT"
    assert head(runtime) == before


@pytest.fixture
async def requester(runtime: Runtime, nats_url: str) -> AsyncIterator[Client]:
    stop = asyncio.Event()
    serving = asyncio.create_task(runtime.responder().run(stop))
    client = await connect_nats(nats_url, name="wl-test-poison")
    await runtime.nc.flush()
    try:
        yield client
    finally:
        await client.close()
        stop.set()
        await serving


async def ask(runtime: Runtime, client: Client, verb: str, body: dict[str, Any],
              headers: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    subject = f"{runtime.stream.subject_prefix}.cmd.device.{verb}"
    reply: dict[str, Any] = msgspec.json.decode((await client.request(
        subject, msgspec.json.encode(body), timeout=10, headers=headers)).data)  # fmt: skip
    return reply


async def test_nats_commands_refuse_the_same_text(
    runtime: Runtime, requester: Client, admin: tuple[SignedIn, httpx.AsyncClient], fleet: EmulatorFleet
) -> None:
    creds = bearer(admin[0])
    principal = await runtime.identity.authenticate_session(admin[0].session_id, admin[0].user_id)
    issued = await runtime.identity.issue_key(principal, NewKey(name="nats", scope=Scope.READ_WRITE),
                                              StepUp(current_password=ADMIN_PASSWORD))  # fmt: skip
    added = await ask(runtime, requester, "add", {"ip": fleet.addresses[0]}, creds)
    assert added["ok"], added
    device = added["result"]["device_id"]
    before = head(runtime)
    renamed = await ask(runtime, requester, "rename", {"device": device, "alias": "Fridge\x00"}, creds)
    control = await ask(runtime, requester, f"{device}.control", {"action": "on", "idempotency_key": "k\x00"},
                        {"X-API-Key": issued.key})  # fmt: skip
    for reply in (renamed, control):
        assert not reply["ok"] and (reply["error"]["status_code"], reply["error"]["error_code"]) == (
            400, "INVALID_TEXT"), reply
    assert head(runtime) == before


# ---- an event no read model can hold, stored anyway ----


async def force_key(runtime: Runtime, user_id: UUID, name: str) -> tuple[UUID, str]:
    """An API key stored straight into the event store, past every check (as older data would be)."""
    key_id = uuid4()
    secret = runtime.identity.secrets.key_secret()
    key = ApiKey.issue(
        key_id, user_id=user_id, name=name, scope=Scope.READ, key_hash=runtime.identity.secrets.digest(secret),
        expires_at=None, actor=f"user:{user_id}",
    )
    await asyncio.to_thread(runtime.app.save, key)
    return key_id, api_key_text(key_id, secret)


def cleaning_nul(projector: Any) -> Any:
    """The projector's `apply_batch` as a release that learned to store names with NUL would have it."""
    apply_batch = projector.apply_batch

    def apply(cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        fixed = [dataclasses.replace(e, name=e.name.replace("\x00", ""))  # type: ignore[type-var]
                 if isinstance(e, ApiKey.Issued) else e for e in events]  # fmt: skip
        apply_batch(cur, fixed)

    return apply


async def test_an_event_with_nul_is_quarantined_shown_and_applied_again_by_retry_once_it_can_be(
    runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient,
    admin: tuple[SignedIn, httpx.AsyncClient], database_url: str,
    nats_url: str, stream_config: StreamConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with background(runtime, poll=False):
        key_id, plain = await force_key(runtime, admin[0].user_id, "a\x00b")
        position = head(runtime)
        after = await client.post("/api/keys", json={"name": "after", "current_password": ADMIN_PASSWORD})
        assert after.status_code == 201, after.text
        lags = await all_projected(runtime)
        assert lags and all(lag == 0 for lag in lags.values()), lags
        held = await quarantined(runtime)
        assert ("identity", position) in held and {name for name, _ in held} <= {"identity", "audit"}, held

        health = (await client.get("/api/health")).json()
        assert health["status"] == "degraded" and health["projectors"]["identity"] == "degraded", health
        status = (await client.get("/api/system/status")).json()
        identity = next(p for p in status["projectors"] if p["name"] == "identity")
        assert (identity["lag"], identity["state"], identity["quarantined"]) == (0, "degraded", 1)
        assert identity["quarantine"][0]["position"] == position and "\x00" not in identity["quarantine"][0]["error"]
        assert [k["name"] for k in (await client.get("/api/keys")).json()] == ["after"]

        # Authentication reads the store: the key works, and its revocation holds, with or without its row.
        assert (await anonymous.get("/api/devices", headers={"X-API-Key": plain})).status_code == 200
        assert (await client.delete(f"/api/keys/{key_id}")).status_code == 200
        assert error_of(await anonymous.get("/api/devices", headers={"X-API-Key": plain}), 401) == "INVALID_API_KEY"
        assert await all_projected(runtime) == {name: 0 for name in lags}

    env = cli_env(database_url, nats_url, stream_config, tmp_path)
    still = await asyncio.to_thread(wattledger, "project", "--retry", env=env, timeout=120)
    assert still.returncode == 1, still.stderr
    assert f"identity position {position:,}: ApiKey.Issued of {key_id} v1: DataError" in still.stdout
    assert "0 now apply" in still.stderr
    assert ("identity", position) in await quarantined(runtime)

    for name in ("identity", "audit"):
        projector = runtime.engine.projectors[name]
        monkeypatch.setattr(projector, "apply_batch", cleaning_nul(projector))
    out, err = io.StringIO(), io.StringIO()
    names = await asyncio.to_thread(runtime.engine.quarantined)
    assert await asyncio.to_thread(replay.retry, runtime.engine, names, out, err) == 0, out.getvalue()
    assert out.getvalue() == "" and "still" not in err.getvalue()
    assert await quarantined(runtime) == []
    assert (await client.get("/api/health")).json()["status"] == "healthy"
    assert sorted(k["name"] for k in (await client.get("/api/keys?everyone=true")).json()) == ["after"]


# ---- revocation while the identity projector is stuck ----


class Stalled:
    """Makes a projector block inside `apply_batch` until released (the engine's pass waits with it)."""

    def __init__(self, projector: Any) -> None:
        self.projector = projector
        self.apply_batch = projector.apply_batch
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, cur: psycopg.Cursor[Any], events: Sequence[object]) -> None:
        self.entered.set()
        self.release.wait(120)
        self.apply_batch(cur, events)


async def test_revoking_a_key_ending_a_session_and_demoting_a_user_hold_at_once_while_identity_is_stuck(
    runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient, operator: httpx.AsyncClient,
    admin: tuple[SignedIn, httpx.AsyncClient], requester: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    principal = await runtime.identity.authenticate_session(admin[0].session_id, admin[0].user_id)
    issued = await runtime.identity.issue_key(principal, NewKey(name="panel", scope=Scope.READ_WRITE),
                                              StepUp(current_password=ADMIN_PASSWORD))  # fmt: skip
    key = {"X-API-Key": issued.key}
    session = await log_in(anonymous, "root", "Admin-passphrase-4-tests")
    olga = user_id_for("olga")
    stall = Stalled(runtime.engine.projectors["identity"])
    monkeypatch.setattr(stall.projector, "apply_batch", stall)
    try:
        async with background(runtime, poll=False):
            assert await asyncio.to_thread(stall.entered.wait, PROJECTION_WAIT_S), "the identity projector ran"
            assert (await anonymous.get("/api/devices", headers=key)).status_code == 200
            assert (await anonymous.get("/api/devices", headers=bearer(session))).status_code == 200
            assert (await operator.post("/api/discover")).status_code != 403

            revoked = await client.delete(f"/api/keys/{issued.key_id}")
            assert revoked.status_code == 200 and revoked.headers[PENDING_HEADER] == "identity", revoked.headers
            assert error_of(await anonymous.get("/api/devices", headers=key), 401) == "INVALID_API_KEY"
            nats = await ask(runtime, requester, "rename", {"device": "127.0.0.1:1", "alias": "x"}, key)
            assert (nats["error"]["status_code"], nats["error"]["error_code"]) == (401, "INVALID_API_KEY"), nats

            out = await anonymous.post("/api/auth/logout", headers=bearer(session))
            assert out.status_code == 200 and out.headers[PENDING_HEADER] == "identity"
            assert error_of(await anonymous.get("/api/devices", headers=bearer(session)), 401) == "SESSION_ENDED"

            demoted = await client.patch(f"/api/users/{olga}", json={"role": "viewer"})
            assert demoted.status_code == 200, demoted.text
            assert error_of(await operator.post("/api/discover"), 403) == "INSUFFICIENT_PERMISSIONS"

            async with runtime.read_pool.connection() as conn:
                cur = await conn.execute(f"SELECT position FROM {TRACKING} WHERE name = 'identity'")
                row = await cur.fetchone()
            assert row is not None and row[0] < head(runtime), "identity was behind all along"
            stall.release.set()
            assert (await all_projected(runtime))["identity"] == 0
    finally:
        stall.release.set()


# ---- any text: refused, or stored and projected ----

FREE_TEXT = st.text(max_size=120)


@pytest.fixture
async def text_world(
    runtime: Runtime, client: httpx.AsyncClient, viewer: httpx.AsyncClient, fleet: EmulatorFleet
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """Projectors running, one device added and a viewer to rename: (admin client, device id, viewer id)."""
    async with background(runtime, poll=False):
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
        assert added.status_code in (201, 202), added.text
        assert all(lag == 0 for lag in (await all_projected(runtime)).values())
        yield client, added.json()["device_id"], str(user_id_for("vera"))


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(text=FREE_TEXT)
@example(text="a\x00b")
@example(text="evil\u202etxt")
@example(text="\U0010fffd\ue000")
@example(text="Küche 💡 \u200d\u00a0\u0301")
async def test_any_text_in_a_free_text_field_is_refused_or_stored_and_projected(
    runtime: Runtime, text_world: tuple[httpx.AsyncClient, str, str], text: str
) -> None:
    client, device_id, viewer_id = text_world
    tou = [{"start_hour": 0, "end_hour": 24, "rate": 0.25, "label": text}]
    answers = [
        await client.post("/api/keys", json={"name": text, "current_password": ADMIN_PASSWORD}),
        await client.patch(f"/api/users/{viewer_id}", json={"full_name": text}),
        await client.patch(f"/api/device/{device_id}", json={"alias": text}),
        await client.post("/api/rates", json={"rate_type": "time_of_use", "time_of_use_rates": tou}),
    ]
    for answer in answers:
        assert answer.status_code < 300 or 400 <= answer.status_code < 500, (answer.request.url, answer.text)
    if refused_character(text) is None and 0 < len(text.strip()) and len(text) <= 64:
        assert [a.status_code for a in answers] == [201, 200, 200, 201], [a.text for a in answers]
    lags = await all_projected(runtime)
    assert all(lag == 0 for lag in lags.values()), lags
    assert await quarantined(runtime) == []
