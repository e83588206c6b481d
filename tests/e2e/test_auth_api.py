"""Identity over HTTP: first-run setup, sign-in, refresh, sign-out, sessions, users, two-factor and keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import httpx
import jwt
import psycopg
import pyotp
import pytest
from litestar import Litestar

from adapters.bus import StreamConfig
from adapters.emulator import EmulatorFleet
from adapters.eventstore import SystemClock
from adapters.identity import SIGNING_KEYS_TABLE, TokenService
from api.app import create_app
from infra.bootstrap import Runtime
from tests.harness import (
    ADMIN,
    ADMIN_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    VIEWER_PASSWORD,
    SignedIn,
    background,
    bearer,
    cli_env,
    create_user,
    error_of,
    http_client,
    log_in,
)

Admin = tuple[SignedIn, httpx.AsyncClient]
SECRET_FIELDS = ("password", "password_hash", "secret", "key_hash", "backup_code", "refresh_token")


@pytest.fixture
async def projecting(runtime: Runtime) -> AsyncIterator[None]:
    """Relay and projectors running, as in `wattledger serve`: answers that wait for the read models get them."""
    async with background(runtime, poll=False):
        yield


def not_a_code_of(totp: pyotp.TOTP) -> str:
    """Six digits that are none of the codes the server would accept now."""
    now = datetime.now(timezone.utc)
    near = {totp.at(now + timedelta(seconds=s)) for s in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in near)


async def test_first_run_setup_happens_once(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/api/auth/setup-required")).json() == {"setup_required": True}
    account = {"username": ADMIN, "password": ADMIN_PASSWORD, "email": "root@home.lan", "full_name": "Root"}
    created = await anonymous.post("/api/auth/setup", json=account)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["username"], body["role"], body["email"], body["is_active"]) == (ADMIN, "admin", "root@home.lan", True)
    assert "USERS_MANAGE" in body["permissions"] and ADMIN_PASSWORD not in created.text
    assert not any(field in body for field in SECRET_FIELDS)
    assert (await anonymous.get("/api/auth/setup-required")).json() == {"setup_required": False}
    again = await anonymous.post("/api/auth/setup", json={**account, "username": "mallory"})
    assert error_of(again, 409) == "SETUP_ALREADY_DONE"
    assert error_of(await anonymous.post("/api/auth/login", json={"username": "mallory", "password": ADMIN_PASSWORD}),
                    401) == "INVALID_CREDENTIALS"  # fmt: skip


async def test_two_setups_at_once_make_one_administrator(anonymous: httpx.AsyncClient) -> None:
    first, second = await asyncio.gather(
        anonymous.post("/api/auth/setup", json={"username": "alice", "password": ADMIN_PASSWORD}),
        anonymous.post("/api/auth/setup", json={"username": "bob", "password": ADMIN_PASSWORD}),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 409], (first.text, second.text)
    loser = second if first.status_code == 201 else first
    assert loser.json()["error_code"] == "SETUP_ALREADY_DONE"
    winner = (first if first.status_code == 201 else second).json()["username"]
    other = "bob" if winner == "alice" else "alice"
    await log_in(anonymous, winner, ADMIN_PASSWORD)
    refused = await anonymous.post("/api/auth/login", json={"username": other, "password": ADMIN_PASSWORD})
    assert error_of(refused, 401) == "INVALID_CREDENTIALS"


async def test_login_answers_tokens_the_user_and_the_session(
    projecting: None, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.post(
        "/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD}, headers={"User-Agent": "pytest/1"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "user", "session"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 1800)
    assert set(body["user"]) == {"id", "username", "email", "role", "permissions"}
    assert (body["user"]["id"], body["user"]["role"]) == (str(admin[0].user_id), "admin")
    assert set(body["session"]) == {"session_id", "created_at", "expires_at"}
    created = datetime.fromisoformat(body["session"]["created_at"])
    assert datetime.fromisoformat(body["session"]["expires_at"]) - created == timedelta(days=7)
    me = await anonymous.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["username"] == ADMIN and me.json()["auth"] == "user"

    wrong = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": "Not-the-passphrase-1"})
    unknown = await anonymous.post("/api/auth/login", json={"username": "nobody", "password": ADMIN_PASSWORD})
    for refused in (wrong, unknown):
        assert error_of(refused, 401) == "INVALID_CREDENTIALS"
        assert refused.json()["error"] == "authentication_failed" and refused.json()["redirect_to"] == "/login"
    assert wrong.json()["detail"] == unknown.json()["detail"]
    extra = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD, "x": 1})
    assert error_of(extra, 422) == "VALIDATION_ERROR"


async def test_refresh_rotates_the_pair_and_a_reused_token_ends_the_session(
    projecting: None, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    first = await anonymous.post("/api/auth/refresh", json={"refresh_token": signed_in.refresh_token})
    assert first.status_code == 200, first.text
    pair = first.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in", "user"}
    assert pair["refresh_token"] != signed_in.refresh_token and pair["user"]["username"] == ADMIN
    second = await anonymous.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200, second.text
    assert (await anonymous.get("/api/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})).is_success

    reused = await anonymous.post("/api/auth/refresh", json={"refresh_token": signed_in.refresh_token})
    assert error_of(reused, 401) == "TOKEN_REUSED"
    for token in (signed_in.access_token, pair["access_token"], second.json()["access_token"]):
        ended = await anonymous.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert error_of(ended, 401) == "SESSION_ENDED"
        assert ended.json()["error"] == "authentication_expired"
    latest = await anonymous.post("/api/auth/refresh", json={"refresh_token": second.json()["refresh_token"]})
    assert error_of(latest, 401) == "SESSION_ENDED"
    assert (await client.get("/api/devices")).status_code == 401


async def test_a_refresh_token_is_not_an_access_token_nor_the_reverse(
    admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in = admin[0]
    as_access = await anonymous.get("/api/devices", headers={"Authorization": f"Bearer {signed_in.refresh_token}"})
    assert error_of(as_access, 401) == "TOKEN_INVALID"
    as_refresh = await anonymous.post("/api/auth/refresh", json={"refresh_token": signed_in.access_token})
    assert error_of(as_refresh, 401) == "TOKEN_INVALID"
    assert (await anonymous.get("/api/devices", headers=bearer(signed_in))).status_code == 200


async def test_logout_makes_its_access_token_fail_at_once(
    projecting: None, runtime: Runtime, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    other = await log_in(anonymous, ADMIN, ADMIN_PASSWORD)
    assert (await client.get("/api/auth/me")).status_code == 200
    # The read model has the live session first, so only a logout that waits for it can pass.
    assert await runtime.services().reads.wait_identity()
    logged_out = await client.post("/api/auth/logout")
    assert logged_out.status_code == 200, logged_out.text
    assert logged_out.json() == {"message": "Logged out successfully", "sessions_terminated": 1}
    assert error_of(await client.get("/api/auth/me"), 401) == "SESSION_ENDED"
    refresh = await anonymous.post("/api/auth/refresh", json={"refresh_token": signed_in.refresh_token})
    assert error_of(refresh, 401) == "SESSION_ENDED"
    assert (await anonymous.get("/api/auth/me", headers=bearer(other))).status_code == 200

    everywhere = await anonymous.post("/api/auth/logout?everywhere=true", headers=bearer(other),
                                      json={"current_password": ADMIN_PASSWORD})  # fmt: skip
    assert everywhere.json()["sessions_terminated"] == 1
    assert error_of(await anonymous.get("/api/auth/me", headers=bearer(other)), 401) == "SESSION_ENDED"


async def test_a_fourth_login_ends_the_oldest_session(
    projecting: None, runtime: Runtime, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    oldest, client = admin
    assert (await client.get("/api/devices")).status_code == 200
    assert await runtime.services().reads.wait_identity()
    later = [await log_in(anonymous, ADMIN, ADMIN_PASSWORD) for _ in range(3)]
    assert error_of(await client.get("/api/devices"), 401) == "SESSION_ENDED"
    sessions = await anonymous.get("/api/auth/sessions", headers=bearer(later[-1]))
    body = sessions.json()
    assert (body["total"], body["max_allowed"]) == (3, 3)
    assert [s["session_id"] for s in body["sessions"]] == [str(s.session_id) for s in later]
    assert [s["is_current"] for s in body["sessions"]] == [False, False, True]
    assert set(body["sessions"][0]) == {
        "session_id", "user_id", "ip_address", "user_agent", "created_at", "last_activity", "expires_at", "is_current",
    }  # fmt: skip

    ended = await anonymous.request("DELETE", f"/api/auth/sessions/{later[0].session_id}", headers=bearer(later[-1]),
                                    json={"current_password": ADMIN_PASSWORD})  # fmt: skip
    assert ended.status_code == 200, ended.text
    assert error_of(await anonymous.get("/api/devices", headers=bearer(later[0])), 401) == "SESSION_ENDED"
    assert (await anonymous.get("/api/devices", headers=bearer(later[1]))).status_code == 200


async def test_deactivating_a_user_stops_its_tokens_and_keys_at_once(
    projecting: None, runtime: Runtime, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    olga = await create_user(client, OPERATOR, OPERATOR_PASSWORD, "operator")
    assert olga["role"] == "operator" and "USERS_MANAGE" not in olga["permissions"]
    session = await log_in(anonymous, OPERATOR, OPERATOR_PASSWORD)
    issued = await anonymous.post("/api/keys", json={"name": "ha", "scope": "read-write",
                                                     "current_password": OPERATOR_PASSWORD}, headers=bearer(session))
    assert issued.status_code == 201, issued.text
    key = {"X-API-Key": issued.json()["key"]}
    assert (await anonymous.get("/api/devices", headers=bearer(session))).status_code == 200
    assert (await anonymous.get("/api/devices", headers=key)).status_code == 200
    assert await runtime.services().reads.wait_identity()

    off = await client.patch(f"/api/users/{olga['id']}", json={"is_active": False})
    assert off.status_code == 200 and off.json()["is_active"] is False, off.text
    assert error_of(await anonymous.get("/api/devices", headers=bearer(session)), 401) == "SESSION_ENDED"
    assert error_of(await anonymous.get("/api/devices", headers=key), 401) == "ACCOUNT_DISABLED"
    login = await anonymous.post("/api/auth/login", json={"username": OPERATOR, "password": OPERATOR_PASSWORD})
    assert error_of(login, 401) == "ACCOUNT_DISABLED"

    on = await client.patch(f"/api/users/{olga['id']}", json={"is_active": True, "full_name": "Olga"})
    assert on.json()["is_active"] is True and on.json()["full_name"] == "Olga"
    assert (await anonymous.get("/api/devices", headers=key)).status_code == 200
    await log_in(anonymous, OPERATOR, OPERATOR_PASSWORD)

    listed = (await client.get("/api/users")).json()
    assert [u["username"] for u in listed] == [OPERATOR, ADMIN]
    assert not any(field in user for user in listed for field in SECRET_FIELDS)
    deleted = await client.delete(f"/api/users/{olga['id']}")
    assert deleted.status_code == 200, deleted.text
    assert error_of(await anonymous.get("/api/devices", headers=key), 401) == "INVALID_API_KEY"
    assert [u["username"] for u in (await client.get("/api/users")).json()] == [ADMIN]
    again = await client.post("/api/users", json={"username": OPERATOR, "password": OPERATOR_PASSWORD})
    assert error_of(again, 409) == "USER_EXISTS"
    assert error_of(await client.delete(f"/api/users/{olga['id']}"), 404) == "USER_NOT_FOUND"


async def test_two_factor_asks_for_a_code_and_takes_each_code_once(
    projecting: None, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    assert (await client.get("/api/auth/2fa/status")).json() == {"enabled": False}
    started = await client.post("/api/auth/2fa/setup", json={"current_password": ADMIN_PASSWORD})
    assert started.status_code == 200 and started.headers["cache-control"] == "no-store", started.text
    enrollment = started.json()
    assert set(enrollment) == {"secret", "otpauth_uri", "qr_code", "backup_codes"}
    assert enrollment["otpauth_uri"].startswith("otpauth://totp/") and enrollment["secret"] in enrollment["otpauth_uri"]
    assert enrollment["qr_code"].startswith("data:image/png;base64,") and len(enrollment["backup_codes"]) == 10
    assert (await client.get("/api/auth/2fa/status")).json() == {"enabled": False}
    totp = pyotp.TOTP(enrollment["secret"])
    wrong = await client.post("/api/auth/2fa/verify", json={"token": not_a_code_of(totp)})
    assert error_of(wrong, 401) == "INVALID_TOTP_CODE"
    verified = await client.post("/api/auth/2fa/verify", json={"token": totp.now()})
    assert verified.status_code == 200 and verified.json()["enabled"] is True, verified.text
    assert (await client.get("/api/auth/2fa/status")).json() == {"enabled": True}

    account = {"username": ADMIN, "password": ADMIN_PASSWORD}
    required = await anonymous.post("/api/auth/login", json=account)
    assert error_of(required, 401) == "TOTP_REQUIRED"
    next_code = totp.at(datetime.now(timezone.utc) + timedelta(seconds=30))
    await log_in(anonymous, ADMIN, ADMIN_PASSWORD, totp_code=next_code)
    replayed = await anonymous.post("/api/auth/login", json={**account, "totp_code": next_code})
    assert error_of(replayed, 401) == "INVALID_TOTP_CODE"
    backup = enrollment["backup_codes"][0]
    await log_in(anonymous, ADMIN, ADMIN_PASSWORD, totp_code=backup.lower().replace("-", " "))
    spent = await anonymous.post("/api/auth/login", json={**account, "totp_code": backup})
    assert error_of(spent, 401) == "INVALID_TOTP_CODE"

    assert error_of(await client.post("/api/auth/2fa/disable", json={"token": backup}), 401) == "INVALID_TOTP_CODE"
    disabled = await client.post("/api/auth/2fa/disable", json={"token": enrollment["backup_codes"][1]})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False, disabled.text
    await log_in(anonymous, ADMIN, ADMIN_PASSWORD)


async def test_api_keys_act_within_their_scope_and_their_owners_role(
    projecting: None, client: httpx.AsyncClient, viewer: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    keys: dict[str, dict[str, str]] = {}
    for scope in ("read", "read-write", "admin"):
        issued = await client.post("/api/keys", json={"name": f"{scope} key", "scope": scope,
                                                      "current_password": ADMIN_PASSWORD})
        assert issued.status_code == 201 and issued.headers["cache-control"] == "no-store", issued.text
        body = issued.json()
        assert body["scope"] == scope and body["key"].startswith(body["prefix"])
        keys[scope] = {"X-API-Key": body["key"]}
    bad = await client.post("/api/keys", json={"name": "x", "scope": "root"})
    assert error_of(bad, 422) == "VALIDATION_ERROR"
    past = await client.post("/api/keys", json={"name": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert error_of(past, 400) == "INVALID_REQUEST"

    read, write, full = keys["read"], keys["read-write"], keys["admin"]
    assert (await anonymous.get("/api/devices", headers=read)).status_code == 200
    refused = await anonymous.post("/api/devices/manual", json={"ip": "not an address"}, headers=read)
    assert error_of(refused, 403) == "INSUFFICIENT_PERMISSIONS"
    assert refused.json()["required_permission"] == "DEVICES_MANAGE"
    assert error_of(await anonymous.post("/api/devices/manual", json={"ip": "not an address"}, headers=write),
                    400) == "INVALID_ADDRESS"  # fmt: skip
    assert (await anonymous.get("/api/users", headers=write)).json()["required_permission"] == "USERS_MANAGE"
    assert (await anonymous.get("/api/users", headers=full)).status_code == 200
    me = (await anonymous.get("/api/auth/me", headers=read)).json()
    assert (me["auth"], me["scope"], me["permissions"]) == ("key", "read", ["DEVICES_VIEW"])
    no_keys_from_keys = await anonymous.post("/api/keys", json={"name": "child"}, headers=full)
    assert error_of(no_keys_from_keys, 403) == "SESSION_REQUIRED"

    viewer_key = (await viewer.post("/api/keys", json={"name": "wide", "scope": "admin",
                                                       "current_password": VIEWER_PASSWORD})).json()["key"]
    assert error_of(await anonymous.get("/api/users", headers={"X-API-Key": viewer_key}), 403) == (
        "INSUFFICIENT_PERMISSIONS"
    )

    listed = await client.get("/api/keys")
    assert [k["scope"] for k in listed.json()] == ["read", "read-write", "admin"]
    assert all(k["last_used_at"] is not None for k in listed.json())
    assert not any(k["X-API-Key"] in listed.text for k in keys.values())
    assert not any(field in k for k in listed.json() for field in ("key", "key_hash"))
    assert len((await client.get("/api/keys?everyone=true")).json()) == 4
    assert error_of(await viewer.get("/api/keys?everyone=true"), 403) == "INSUFFICIENT_PERMISSIONS"

    revoked = await client.delete(f"/api/keys/{listed.json()[0]['key_id']}")
    assert revoked.status_code == 200, revoked.text
    assert error_of(await anonymous.get("/api/devices", headers=read), 401) == "INVALID_API_KEY"
    assert [k["scope"] for k in (await client.get("/api/keys")).json()] == ["read-write", "admin"]


async def test_the_last_administrator_cannot_be_demoted_deactivated_or_deleted(
    projecting: None, api: Litestar, admin: Admin
) -> None:
    signed_in, client = admin
    me = f"/api/users/{signed_in.user_id}"
    assert error_of(await client.patch(me, json={"role": "viewer"}), 409) == "LAST_ADMIN"
    assert error_of(await client.patch(me, json={"is_active": False}), 409) == "LAST_ADMIN"
    assert error_of(await client.delete(me), 409) == "LAST_ADMIN"
    assert (await client.get("/api/auth/me")).json()["role"] == "admin"

    second = await create_user(client, "ada", ADMIN_PASSWORD, "admin")
    demoted = await client.patch(me, json={"role": "operator"})
    assert demoted.status_code == 200 and demoted.json()["role"] == "operator", demoted.text
    assert error_of(await client.get("/api/users"), 403) == "INSUFFICIENT_PERMISSIONS"
    async with http_client(api) as ada:
        ada.headers.update(bearer(await log_in(ada, "ada", ADMIN_PASSWORD)))
        assert error_of(await ada.delete(f"/api/users/{second['id']}"), 409) == "LAST_ADMIN"


async def test_credentials_in_the_query_string_are_ignored(
    runtime: Runtime, admin: Admin, read_key: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    key = read_key.headers["X-API-Key"]
    token = admin[0].access_token
    for query in (f"api_key={key}", f"X-API-Key={key}", f"token={token}", f"access_token={token}",
                  f"authorization=Bearer%20{token}"):  # fmt: skip
        response = await anonymous.get(f"/api/devices?{query}")
        assert error_of(response, 401) == "AUTHENTICATION_REQUIRED", query
    assert (await anonymous.get("/api/devices", headers={"X-API-Key": key})).status_code == 200


async def test_change_password_ends_the_other_sessions(
    projecting: None, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    other = await log_in(anonymous, ADMIN, ADMIN_PASSWORD)
    client = admin[1]
    wrong = await client.post("/api/auth/change-password",
                              json={"current_password": "Wrong-passphrase-1", "new_password": "A new passphrase 2"})
    assert error_of(wrong, 422) == "WRONG_PASSWORD"
    weak = await client.post("/api/auth/change-password",
                             json={"current_password": ADMIN_PASSWORD, "new_password": "short"})
    assert error_of(weak, 422) == "PASSWORD_POLICY"
    changed = await client.post("/api/auth/change-password",
                                json={"current_password": ADMIN_PASSWORD, "new_password": "A new passphrase 2"})
    assert changed.status_code == 200, changed.text
    assert error_of(await anonymous.get("/api/devices", headers=bearer(other)), 401) == "SESSION_ENDED"
    assert (await client.get("/api/devices")).status_code == 200
    old = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert error_of(old, 401) == "INVALID_CREDENTIALS"
    await log_in(anonymous, ADMIN, "A new passphrase 2")


async def test_security_status_describes_tokens_and_sessions(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/auth/security-status")).json()
    assert body["jwt_configuration"] == {
        "algorithm": "HS256", "access_token_expire_minutes": 30, "refresh_token_expire_days": 7,
    }  # fmt: skip
    assert body["security_features"]["token_refresh_enabled"] is True and body["max_sessions_per_user"] == 3


async def test_every_event_written_through_the_api_names_the_user_or_key_behind_it(
    projecting: None,
    runtime: Runtime,
    api: Litestar,
    admin: Admin,
    operator: httpx.AsyncClient,
    fleet: EmulatorFleet,
) -> None:
    signed_in, client = admin
    issued = (await client.post("/api/keys", json={"name": "automation", "scope": "read-write",
                                                   "current_password": ADMIN_PASSWORD})).json()
    async with http_client(api, headers={"X-API-Key": issued["key"]}) as by_key:
        added = await client.post("/api/devices/manual", json={"ip": fleet.addresses[0]})
        assert added.status_code == 201, added.text
        assert (await by_key.delete(f"/api/devices/{fleet.addresses[0]}")).status_code == 200
        assert (await by_key.post("/api/devices/manual", json={"ip": fleet.addresses[0]})).status_code == 201
        assert (await operator.post("/api/devices/manual", json={"ip": fleet.addresses[1]})).status_code == 201
    operator_id = (await operator.get("/api/auth/me")).json()["id"]

    notifications = await asyncio.to_thread(runtime.app.recorder.select_notifications, start=1, limit=10_000)
    events = [runtime.app.mapper.to_domain_event(n) for n in notifications]
    actors = [getattr(e, "actor", None) for e in events]
    assert all(a is not None or type(e).__qualname__ == "MeterDay.Opened" for a, e in zip(actors, events, strict=True))
    assert all(a is None or a.startswith(("user:", "key:")) for a in actors), set(actors)
    lifecycle = {"Device.Added", "Device.Removed", "Device.Restored"}
    device_actors = [(type(e).__qualname__, e.actor) for e in events if type(e).__qualname__ in lifecycle]
    assert device_actors == [
        ("Device.Added", f"user:{signed_in.user_id}"),
        ("Device.Removed", f"key:{issued['key_id']}"),
        ("Device.Restored", f"key:{issued['key_id']}"),
        ("Device.Added", f"user:{operator_id}"),
    ]


async def test_rotate_keys_adds_a_signing_key_and_old_tokens_keep_working(
    projecting: None,
    tmp_path: Path,
    runtime: Runtime,
    admin: Admin,
    database_url: str,
    nats_url: str,
    stream_config: StreamConfig,
) -> None:
    signed_in, client = admin
    old_kid = jwt.get_unverified_header(signed_in.access_token)["kid"]
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "auth", "rotate-keys"],
        env=cli_env(database_url, nats_url, stream_config, tmp_path), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    new_kid = json.loads(result.stdout)["signing_key_id"]
    assert new_kid != old_kid
    with psycopg.connect(database_url) as conn:
        stored = [row[0] for row in conn.execute(f"SELECT kid FROM {SIGNING_KEYS_TABLE} ORDER BY created_at")]
    assert stored == [old_kid, new_kid]

    assert (await client.get("/api/auth/me")).status_code == 200
    reopened = await TokenService.open(database_url, clock=SystemClock())
    deps = runtime.services()
    restarted = dataclasses.replace(
        deps, identity=dataclasses.replace(deps.identity, tokens=reopened),
        live=dataclasses.replace(deps.live, tokens=reopened),
    )
    async with http_client(create_app(restarted)) as fresh:
        assert (await fresh.get("/api/auth/me", headers=bearer(signed_in))).status_code == 200
        newer = await log_in(fresh, ADMIN, ADMIN_PASSWORD)
    assert jwt.get_unverified_header(newer.access_token)["kid"] == new_kid
    assert (await client.get("/api/auth/me", headers=bearer(newer))).status_code == 200
    assert UUID(str(newer.user_id)) == signed_in.user_id
