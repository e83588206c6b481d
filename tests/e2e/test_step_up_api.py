"""A stolen access token does not take the account over (issue 17, finding 6).

Issuing a key, setting up two-factor and ending other sessions are confirmed with the current
password or a current TOTP code; only sessions and `admin`-scope keys manage sessions and keys;
keys outlive sign-outs and password changes unless the change revokes them; an administrator
resets a user's lost second factor. Rate limits are on, so wrong confirmations count as failed
sign-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pyotp
import pytest
from litestar import Litestar

from adapters.contract import data_type, event_data
from adapters.ratelimits import MAX_WINDOW_S, Limit
from domain.identity import ApiKey, User
from infra.bootstrap import Runtime
from infra.settings import Settings
from tests.harness import (
    ADMIN,
    ADMIN_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    SignedIn,
    background,
    bearer,
    create_user,
    error_of,
    log_in,
)

Admin = tuple[SignedIn, httpx.AsyncClient]
CONFIRMED = {"current_password": ADMIN_PASSWORD}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Limits no test here reaches but the failed-attempt ones, over windows no test outlives."""
    return msgspec.structs.replace(
        settings,
        rate_limits=True,
        rate_limit_ip=(Limit(1000, MAX_WINDOW_S),),
        rate_limit_user=(Limit(1000, MAX_WINDOW_S),),
        rate_limit_key=(Limit(1000, MAX_WINDOW_S),),
        rate_limit_login=(Limit(4, MAX_WINDOW_S),),
        rate_limit_login_ip=(Limit(8, MAX_WINDOW_S),),
    )


@pytest.fixture
async def projecting(runtime: Runtime) -> AsyncIterator[None]:
    async with background(runtime, poll=False):
        yield


async def events_of(runtime: Runtime, kind: type[Any]) -> list[Any]:
    notifications = await asyncio.to_thread(runtime.app.recorder.select_notifications, start=1, limit=10_000)
    return [e for e in map(runtime.app.mapper.to_domain_event, notifications) if isinstance(e, kind)]


async def delete_with(http: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    return await http.request("DELETE", path, json=body, headers=headers)


def forbidden(response: httpx.Response) -> str:
    code = error_of(response, 403)
    assert response.json()["error"] == "authorization_failed" and response.json()["required_permission"] is None
    return code


async def test_a_token_without_the_password_issues_no_key_sets_up_no_second_factor_and_ends_no_other_session(
    projecting: None, runtime: Runtime, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    other = await log_in(anonymous, ADMIN, ADMIN_PASSWORD)
    wrong = {"current_password": "Not-the-passphrase-1"}
    other_session = f"/api/auth/sessions/{other.session_id}"

    assert forbidden(await client.post("/api/keys", json={"name": "mine now"})) == "STEP_UP_REQUIRED"
    assert error_of(await client.post("/api/keys", json={"name": "mine now", **wrong}), 401) == "INVALID_CREDENTIALS"
    assert forbidden(await client.post("/api/auth/2fa/setup")) == "STEP_UP_REQUIRED"
    assert error_of(await client.post("/api/auth/2fa/setup", json=wrong), 401) == "INVALID_CREDENTIALS"
    no_code_yet = await client.post("/api/auth/2fa/setup", json={"totp_code": "123456"})
    assert error_of(no_code_yet, 401) == "INVALID_TOTP_CODE"
    assert forbidden(await client.post("/api/auth/logout?everywhere=true")) == "STEP_UP_REQUIRED"
    assert forbidden(await delete_with(client, other_session)) == "STEP_UP_REQUIRED"

    assert (await client.get("/api/keys")).json() == []
    assert (await client.get("/api/auth/2fa/status")).json() == {"enabled": False}
    assert (await anonymous.get("/api/auth/me", headers=bearer(other))).status_code == 200
    assert not await events_of(runtime, User.TotpSetupStarted) and not await events_of(runtime, ApiKey.Issued)

    issued = await client.post("/api/keys", json={"name": "confirmed", **CONFIRMED})
    assert issued.status_code == 201, issued.text
    started = await client.post("/api/auth/2fa/setup", json=CONFIRMED)
    assert started.status_code == 200 and started.json()["secret"], started.text
    ended = await delete_with(client, other_session, CONFIRMED)
    assert ended.status_code == 200, ended.text
    assert error_of(await anonymous.get("/api/auth/me", headers=bearer(other)), 401) == "SESSION_ENDED"

    third = await log_in(anonymous, ADMIN, ADMIN_PASSWORD)
    own = await delete_with(anonymous, f"/api/auth/sessions/{third.session_id}", headers=bearer(third))
    assert own.status_code == 200, "ending one's own session needs no confirmation"
    assert (await client.post("/api/auth/logout")).json()["sessions_terminated"] == 1
    assert error_of(await anonymous.get("/api/auth/me", headers=bearer(signed_in)), 401) == "SESSION_ENDED"


async def test_wrong_confirmations_count_as_failed_sign_ins(
    api: Litestar, client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    other = await log_in(anonymous, ADMIN, ADMIN_PASSWORD)
    guesses = [
        await client.post("/api/keys", json={"name": "k", "current_password": "guess one"}),
        await client.post("/api/auth/logout?everywhere=true", json={"current_password": "guess two"}),
        await delete_with(client, f"/api/auth/sessions/{other.session_id}", {"current_password": "guess three"}),
        await client.post("/api/auth/2fa/setup", json={"current_password": "guess four"}),
    ]
    assert [g.json()["error_code"] for g in guesses] == ["INVALID_CREDENTIALS"] * 4
    assert [g.headers.get("X-RateLimit-Remaining") for g in guesses] == ["3", "2", "1", "0"]
    locked = await client.post("/api/keys", json={"name": "k", **CONFIRMED})
    assert locked.status_code == 429 and "account" in locked.json()["detail"], locked.text
    missing = await client.post("/api/keys", json={"name": "k"})
    assert missing.status_code == 429, "a locked address may not try again, with or without a password"
    sign_in_here = await anonymous.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert sign_in_here.status_code == 429
    elsewhere = httpx.ASGITransport(app=api, client=("127.0.0.71", 50000))
    async with httpx.AsyncClient(transport=elsewhere, base_url="http://wattledger.test") as owner:
        assert (await owner.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})).is_success
    assert (await client.post("/api/auth/logout")).status_code == 200, "signing out is never locked"
    assert (await anonymous.get("/api/auth/me", headers=bearer(other))).status_code == 200


async def test_a_current_code_confirms_instead_of_the_password_and_only_once(
    projecting: None, client: httpx.AsyncClient
) -> None:
    enrollment = (await client.post("/api/auth/2fa/setup", json=CONFIRMED)).json()
    totp = pyotp.TOTP(enrollment["secret"])
    assert (await client.post("/api/auth/2fa/verify", json={"token": totp.now()})).status_code == 200
    code = totp.at(datetime.now(timezone.utc) + timedelta(seconds=30))
    issued = await client.post("/api/keys", json={"name": "by code", "totp_code": code})
    assert issued.status_code == 201, issued.text
    again = await client.post("/api/keys", json={"name": "same code", "totp_code": code})
    assert error_of(again, 401) == "INVALID_TOTP_CODE"
    backup = await client.post("/api/keys", json={"name": "backup", "totp_code": enrollment["backup_codes"][0]})
    assert error_of(backup, 401) == "INVALID_TOTP_CODE"
    assert [k["name"] for k in (await client.get("/api/keys")).json()] == ["by code"]


async def test_only_sessions_and_admin_keys_manage_the_accounts_sessions_and_keys(
    projecting: None, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    keys = {}
    for scope in ("read-write", "admin"):
        issued = (await client.post("/api/keys", json={"name": scope, "scope": scope, **CONFIRMED})).json()
        keys[scope] = ({"X-API-Key": issued["key"]}, issued["key_id"])
    (write, write_id), (full, full_id) = keys["read-write"], keys["admin"]
    own_session = f"/api/auth/sessions/{signed_in.session_id}"
    for refused in (
        await delete_with(anonymous, own_session, CONFIRMED, headers=write),
        await anonymous.delete(f"/api/keys/{full_id}", headers=write),
        await anonymous.delete(f"/api/keys/{write_id}", headers=write),
        await anonymous.post("/api/auth/logout?everywhere=true", json=CONFIRMED, headers=write),
        await anonymous.post("/api/keys", json={"name": "child", **CONFIRMED}, headers=write),
        await anonymous.post("/api/auth/2fa/setup", json=CONFIRMED, headers=write),
        await anonymous.post("/api/auth/change-password",
                             json={**CONFIRMED, "new_password": "Another-passphrase-7"}, headers=write),
    ):  # fmt: skip
        assert forbidden(refused) == "SESSION_REQUIRED", refused.request.url
    assert (await client.get("/api/auth/me")).status_code == 200
    assert (await anonymous.get("/api/devices", headers=full)).status_code == 200

    assert forbidden(await anonymous.post("/api/keys", json={"name": "child", **CONFIRMED}, headers=full)) == (
        "SESSION_REQUIRED"
    )
    assert (await anonymous.delete(f"/api/keys/{write_id}", headers=full)).status_code == 200
    assert error_of(await anonymous.get("/api/devices", headers=write), 401) == "INVALID_API_KEY"
    assert forbidden(await delete_with(anonymous, own_session, headers=full)) == "STEP_UP_REQUIRED"
    assert (await delete_with(anonymous, own_session, CONFIRMED, headers=full)).status_code == 200
    assert error_of(await client.get("/api/auth/me"), 401) == "SESSION_ENDED"


async def test_keys_outlive_sign_outs_and_password_changes_unless_the_change_revokes_them(
    projecting: None, runtime: Runtime, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    keys = [(await client.post("/api/keys", json={"name": f"k{i}", **CONFIRMED})).json() for i in range(2)]
    headers = [{"X-API-Key": k["key"]} for k in keys]
    assert (await client.post("/api/auth/logout?everywhere=true", json=CONFIRMED)).status_code == 200
    assert all([(await anonymous.get("/api/devices", headers=h)).status_code == 200 for h in headers])

    session = bearer(await log_in(anonymous, ADMIN, ADMIN_PASSWORD))
    new_password = "A new passphrase 2"
    kept = await anonymous.post("/api/auth/change-password", headers=session,
                                json={"current_password": ADMIN_PASSWORD, "new_password": new_password})  # fmt: skip
    assert kept.status_code == 200, kept.text
    assert all([(await anonymous.get("/api/devices", headers=h)).status_code == 200 for h in headers])

    revoked = await anonymous.post("/api/auth/change-password", headers=session, json={
        "current_password": new_password, "new_password": "A newer passphrase 3", "revoke_api_keys": True,
    })  # fmt: skip
    assert revoked.status_code == 200 and "revoked" in revoked.json()["message"], revoked.text
    for h in headers:
        assert error_of(await anonymous.get("/api/devices", headers=h), 401) == "INVALID_API_KEY"
    assert (await anonymous.get("/api/keys", headers=session)).json() == []
    revocations = await events_of(runtime, ApiKey.Revoked)
    assert sorted((str(e.originator_id), e.actor) for e in revocations) == sorted(
        (k["key_id"], f"user:{signed_in.user_id}") for k in keys
    )


async def test_an_administrator_resets_a_lost_second_factor(
    projecting: None, runtime: Runtime, admin: Admin, anonymous: httpx.AsyncClient
) -> None:
    signed_in, client = admin
    olga_id = UUID((await create_user(client, OPERATOR, OPERATOR_PASSWORD, "operator"))["id"])
    olga = await log_in(anonymous, OPERATOR, OPERATOR_PASSWORD)
    as_olga = bearer(olga)
    enrollment = (await anonymous.post("/api/auth/2fa/setup", json={"current_password": OPERATOR_PASSWORD},
                                       headers=as_olga)).json()  # fmt: skip
    totp = pyotp.TOTP(enrollment["secret"])
    assert (await anonymous.post("/api/auth/2fa/verify", json={"token": totp.now()}, headers=as_olga)).is_success
    login = {"username": OPERATOR, "password": OPERATOR_PASSWORD}
    assert error_of(await anonymous.post("/api/auth/login", json=login), 401) == "TOTP_REQUIRED"

    refused = await anonymous.delete(f"/api/users/{olga_id}/2fa", headers=as_olga)
    assert error_of(refused, 403) == "INSUFFICIENT_PERMISSIONS" and refused.json()["required_permission"] == (
        "USERS_MANAGE"
    )
    reset = await client.delete(f"/api/users/{olga_id}/2fa")
    assert reset.status_code == 200 and reset.json()["user_id"] == str(olga_id), reset.text
    assert error_of(await anonymous.get("/api/auth/me", headers=as_olga), 401) == "SESSION_ENDED"
    assert (await client.get("/api/auth/me")).status_code == 200, "the administrator's own session stays"
    assert next(u for u in (await client.get("/api/users")).json() if u["id"] == str(olga_id))["totp_enabled"] is False
    again = await log_in(anonymous, OPERATOR, OPERATOR_PASSWORD)
    assert (await anonymous.get("/api/auth/2fa/status", headers=bearer(again))).json() == {"enabled": False}
    stale = await anonymous.post("/api/auth/2fa/disable", json={"token": totp.now()}, headers=bearer(again))
    assert error_of(stale, 409) == "TOTP_NOT_ENABLED"

    assert error_of(await client.delete(f"/api/users/{olga_id}/2fa"), 409) == "TOTP_NOT_ENABLED"
    assert error_of(await client.delete(f"/api/users/{signed_in.session_id}/2fa"), 404) == "USER_NOT_FOUND"
    [event] = await events_of(runtime, User.TotpReset)
    assert (event.originator_id, event.actor) == (olga_id, f"user:{signed_in.user_id}")
    published = data_type("user", "TotpReset")
    assert published is not None and msgspec.to_builtins(event_data(event)) == {}


async def test_an_administrator_sets_an_own_new_password_only_through_change_password(
    admin: Admin, projecting: None
) -> None:
    signed_in, http = admin
    refused = await http.patch(f"/api/users/{signed_in.user_id}", json={"password": "Another-passphrase-77"})
    assert (refused.status_code, refused.json()["error_code"]) == (403, "STEP_UP_REQUIRED"), refused.text
    assert (await http.get("/api/auth/me")).status_code == 200, "the session was not ended by a refused change"
