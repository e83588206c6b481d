"""Rate limits at the HTTP edge: per IP, per user, per key and on failed sign-ins, over real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pyotp
import pytest
from structlog.testing import capture_logs

from adapters.ratelimits import MAX_WINDOW_S, Limit, PgRateCounters
from api.app import create_app
from domain.access import Principal, Role, Scope
from domain.identity_requests import NewKey, NewUser, StepUp
from infra.bootstrap import Runtime
from infra.settings import Settings, SettingsError, load_settings
from tests.harness import (
    ADMIN,
    ADMIN_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    SignedIn,
    background,
    bearer,
    free_port,
    log_in,
)

LONG = MAX_WINDOW_S
PUBLIC_PATH = "/api/auth/setup-required"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits over windows no test outlives, so no count is cut short by a new window."""
    return msgspec.structs.replace(
        settings,
        rate_limits=True,
        rate_limit_ip=(Limit(100, LONG),),
        rate_limit_user=(Limit(8, LONG),),
        rate_limit_key=(Limit(50, 60), Limit(3, LONG)),
        rate_limit_login=(Limit(3, LONG),),
        rate_limit_login_ip=(Limit(6, LONG),),
    )


@asynccontextmanager
async def http(runtime: Runtime, ip: str, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app, seen by it as coming from `ip`."""
    transport = httpx.ASGITransport(app=create_app(runtime.services()), client=(ip, 50001))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattledger.test", headers=headers) as client:
        yield client


async def fresh_minute(margin: float = 5.0) -> None:
    """Wait, if need be, until the current minute window has `margin` seconds left."""
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.05)


def limit_headers(response: httpx.Response) -> tuple[str, ...] | None:
    values = tuple(response.headers.get(f"X-RateLimit-{name}") for name in ("Limit", "Remaining", "Reset"))
    return values if None not in values else None


def remaining(responses: list[httpx.Response]) -> list[str | None]:
    return [r.headers.get("X-RateLimit-Remaining") for r in responses]


def forged_token(user_id: UUID) -> str:
    """A token shaped like an access token, naming `user_id`, signed by no key of ours."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": str(user_id), "sid": str(user_id), "typ": "access", "iss": "wattledger", "exp": 4102444800}
    return f"{part({'alg': 'HS256', 'kid': 'forged', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def member(runtime: Runtime, creator: Principal, ip: str = "127.0.0.9") -> SignedIn:
    """The operator, created by the administrator and signed in over HTTP from `ip`."""
    await runtime.identity.create_user(creator, NewUser(username=OPERATOR, password=OPERATOR_PASSWORD,
                                                        role=Role.OPERATOR))  # fmt: skip
    async with http(runtime, ip) as client:
        return await log_in(client, OPERATOR, OPERATOR_PASSWORD)


# ---- every answer, and per address ----


async def test_every_answer_carries_the_limit_headers(anonymous: httpx.AsyncClient) -> None:
    answers = [
        await anonymous.get("/api/devices"),
        await anonymous.get("/api/no/such/route"),
        await anonymous.post("/api/devices/manual", json={"ip": "127.0.0.1"}),
        await anonymous.put(PUBLIC_PATH),
        await anonymous.get("/schema/openapi.json"),
        await anonymous.get(PUBLIC_PATH),
    ]
    sign_in = await anonymous.post("/api/auth/login", json={"username": ADMIN})
    assert [a.status_code for a in answers] == [401, 404, 401, 405, 200, 200]
    headers = [limit_headers(a) for a in answers]
    assert [h and h[:2] for h in headers] == [("100", str(99 - i)) for i in range(6)]
    reset = int(headers[0][2]) if headers[0] else 0
    assert reset % LONG == 0 and time.time() < reset <= time.time() + LONG
    assert all(h and int(h[2]) == reset for h in headers)
    # A sign-in's tightest limit is the one on failed attempts.
    assert sign_in.status_code == 422 and limit_headers(sign_in) == ("3", "3", str(reset))


async def test_the_health_check_is_neither_counted_nor_labelled(anonymous: httpx.AsyncClient) -> None:
    before = await anonymous.get(PUBLIC_PATH)
    health = [await anonymous.get("/api/health") for _ in range(3)]
    after = await anonymous.get(PUBLIC_PATH)
    assert [h.status_code for h in health] == [200] * 3 and all(limit_headers(h) is None for h in health)
    assert remaining([before, after]) == ["99", "98"]


async def test_the_101st_request_in_a_minute_from_one_address_is_refused(runtime: Runtime) -> None:
    runtime.settings = msgspec.structs.replace(runtime.settings, rate_limit_ip=(Limit(100, 60),))
    await fresh_minute()
    async with http(runtime, "127.0.0.1") as client:
        statuses = [(await client.get("/api/devices")).status_code for _ in range(100)]
        refused = await client.get("/api/devices")
    assert statuses == [401] * 100
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert refused.headers["X-RateLimit-Limit"] == "100" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.json() == {
        "error": "rate_limit_exceeded",
        "message": "Too many requests. Please try again later.",
        "retry_after": retry_after,
        "limit": "100 per minute",
        "detail": "Rate limit exceeded for this address: 100 per minute",
        "status_code": 429,
        "error_code": "RATE_LIMIT_EXCEEDED",
    }
    async with http(runtime, "127.0.0.2") as elsewhere:
        assert (await elsewhere.get("/api/devices")).status_code == 401


async def test_an_ipv6_client_is_counted_by_its_64_network(runtime: Runtime) -> None:
    async with http(runtime, "2001:db8:1:2::10") as a, http(runtime, "2001:db8:1:2::99") as b:
        first, second = await a.get(PUBLIC_PATH), await b.get(PUBLIC_PATH)
    async with http(runtime, "2001:db8:1:3::10") as other:
        third = await other.get(PUBLIC_PATH)
    assert remaining([first, second, third]) == ["99", "98", "99"]


# ---- per key and per user ----


async def test_each_api_key_has_its_own_allowance(runtime: Runtime, admin_principal: Principal) -> None:
    confirmed = StepUp(current_password=ADMIN_PASSWORD)
    first, second = [
        (await runtime.identity.issue_key(admin_principal, NewKey(name=name, scope=Scope.READ), confirmed)).key
        for name in ("dashboard", "backup")
    ]
    async with http(runtime, "127.0.0.3", {"X-API-Key": first}) as with_first:
        answers = [await with_first.get("/api/devices") for _ in range(3)]
        refused = await with_first.get("/api/devices")
    async with http(runtime, "127.0.0.3", {"X-API-Key": second}) as with_second:
        other = await with_second.get("/api/devices")
    assert [a.status_code for a in answers] == [200] * 3
    assert [(a.headers["X-RateLimit-Limit"], a.headers["X-RateLimit-Remaining"]) for a in answers] == [
        ("3", "2"), ("3", "1"), ("3", "0"),
    ]  # fmt: skip
    assert refused.status_code == 429
    assert refused.json()["limit"] == "3 per 30 days" and "API key" in refused.json()["detail"]
    assert other.status_code == 200 and other.headers["X-RateLimit-Remaining"] == "2"


async def test_an_api_key_sent_as_a_bearer_token_is_charged_as_that_key(
    runtime: Runtime, admin_principal: Principal
) -> None:
    """`Authorization: Bearer <API key>` authenticates as the key, so the key's own limits count it."""
    confirmed = StepUp(current_password=ADMIN_PASSWORD)
    key = (await runtime.identity.issue_key(admin_principal, NewKey(name="scraper", scope=Scope.READ), confirmed)).key
    async with http(runtime, "127.0.0.9", {"Authorization": f"Bearer {key}"}) as as_bearer:
        answers = [await as_bearer.get("/api/devices") for _ in range(2)]
    async with http(runtime, "127.0.0.10", {"X-API-Key": key}) as as_header:
        third = await as_header.get("/api/devices")
        refused = await as_header.get("/api/devices")
    assert [a.status_code for a in answers] == [200, 200]
    assert remaining(answers) == ["2", "1"]
    assert third.status_code == 200 and third.headers["X-RateLimit-Remaining"] == "0"
    assert refused.status_code == 429 and "API key" in refused.json()["detail"]


async def test_one_address_switching_keys_is_counted_against_each_key(
    runtime: Runtime, admin_principal: Principal
) -> None:
    """The limiter keeps a client's windows at hand between requests: by address and credentials both."""
    confirmed = StepUp(current_password=ADMIN_PASSWORD)
    first, second = [
        (await runtime.identity.issue_key(admin_principal, NewKey(name=name, scope=Scope.READ), confirmed)).key
        for name in ("dashboard", "backup")
    ]
    async with http(runtime, "127.0.0.8") as client:
        answers = [await client.get("/api/devices", headers={"X-API-Key": key})
                   for key in (first, second, first, second, first)]  # fmt: skip
        refused = await client.get("/api/devices", headers={"X-API-Key": first})
        keyless = await client.get(PUBLIC_PATH)
    assert [a.status_code for a in answers] == [200] * 5 and remaining(answers) == ["2", "2", "1", "1", "0"]
    assert refused.status_code == 429
    assert keyless.status_code == 200 and keyless.headers["X-RateLimit-Remaining"] == str(100 - 7)


async def test_each_user_has_their_own_allowance(
    runtime: Runtime, client: httpx.AsyncClient, admin_principal: Principal
) -> None:
    answers = [await client.get("/api/devices") for _ in range(8)]
    refused = await client.get("/api/devices")
    operator = await member(runtime, admin_principal)
    async with http(runtime, "127.0.0.4", bearer(operator)) as as_operator:
        theirs = await as_operator.get("/api/devices")
    assert [a.status_code for a in answers] == [200] * 8 and remaining(answers) == [str(7 - i) for i in range(8)]
    assert refused.status_code == 429 and refused.json()["detail"] == "Rate limit exceeded for this user: 8 per 30 days"
    assert theirs.status_code == 200 and theirs.headers["X-RateLimit-Remaining"] == "7"


async def test_forged_tokens_spend_nothing_of_the_user_they_name(
    runtime: Runtime, admin_principal: Principal
) -> None:
    operator = await member(runtime, admin_principal)
    forged = {"Authorization": f"Bearer {forged_token(operator.user_id)}"}
    async with http(runtime, "127.0.0.5", forged) as forger:
        refused = [await forger.get("/api/devices") for _ in range(6)]
        public = [await forger.get(PUBLIC_PATH) for _ in range(6)]
    async with http(runtime, "127.0.0.6", bearer(operator)) as as_operator:
        genuine = await as_operator.get("/api/devices")
    assert [r.json()["error_code"] for r in refused] == ["TOKEN_INVALID"] * 6
    assert [p.status_code for p in public] == [200] * 6
    assert genuine.status_code == 200 and genuine.headers["X-RateLimit-Remaining"] == "7"


async def test_a_key_sent_beside_a_token_is_charged_only_when_it_was_used(
    runtime: Runtime, admin_principal: Principal
) -> None:
    key = (await runtime.identity.issue_key(admin_principal, NewKey(name="dashboard", scope=Scope.READ),
                                            StepUp(current_password=ADMIN_PASSWORD))).key
    operator = await member(runtime, admin_principal)
    async with http(runtime, "127.0.0.7", {**bearer(operator), "X-API-Key": key}) as both:
        answers = [await both.get("/api/devices") for _ in range(3)]
    async with http(runtime, "127.0.0.7", {"X-API-Key": key}) as key_only:
        keyed = await key_only.get("/api/devices")
    assert [a.status_code for a in answers] == [200] * 3  # the token wins, so the key was not used
    assert keyed.status_code == 200 and keyed.headers["X-RateLimit-Remaining"] == "2"


async def test_an_address_over_its_limit_spends_no_one_elses_allowance(
    runtime: Runtime, admin_principal: Principal
) -> None:
    operator = await member(runtime, admin_principal)
    async with http(runtime, "192.0.2.50") as flooder:
        statuses = [(await flooder.get(PUBLIC_PATH)).status_code for _ in range(100)]
        refused = [(await flooder.get("/api/devices", headers=bearer(operator))).status_code for _ in range(5)]
    async with http(runtime, "192.0.2.51", bearer(operator)) as as_operator:
        answer = await as_operator.get("/api/devices")
    assert statuses == [200] * 100 and refused == [429] * 5
    assert answer.status_code == 200 and answer.headers["X-RateLimit-Remaining"] == "7"


# ---- failed sign-ins and second factors ----


async def test_failed_sign_ins_lock_that_account_from_that_address_only(
    runtime: Runtime, admin_principal: Principal
) -> None:
    await member(runtime, admin_principal)
    right = {"username": OPERATOR.upper(), "password": OPERATOR_PASSWORD}
    async with http(runtime, "127.0.0.8") as client:
        wrong = [await client.post("/api/auth/login", json={"username": OPERATOR, "password": "not the password"})
                 for _ in range(3)]  # fmt: skip
        locked = await client.post("/api/auth/login", json=right)
        admin = await client.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    async with http(runtime, "127.0.0.80") as owner:
        elsewhere = await owner.post("/api/auth/login", json=right)
    assert [w.json()["error_code"] for w in wrong] == ["INVALID_CREDENTIALS"] * 3
    assert remaining(wrong) == ["2", "1", "0"]
    assert locked.status_code == 429, locked.text
    assert locked.json()["limit"] == "3 per 30 days"
    assert locked.json()["detail"] == (
        "Too many failed sign-in attempts for this account from this address: 3 per 30 days"
    )
    assert int(locked.headers["Retry-After"]) >= 1
    assert admin.status_code == 200 and admin.json()["access_token"]
    # The stranger's failures do not lock the owner out from another address.
    assert elsewhere.status_code == 200, elsewhere.text


async def test_failures_from_one_address_lock_it_for_every_account(
    runtime: Runtime, admin_principal: Principal
) -> None:
    await member(runtime, admin_principal)
    async with http(runtime, "198.51.100.7") as client:
        guesses = [await client.post("/api/auth/login", json={"username": f"user{i}", "password": "a guess"})
                   for i in range(7)]  # fmt: skip
        locked = await client.post("/api/auth/login", json={"username": OPERATOR, "password": OPERATOR_PASSWORD})
    async with http(runtime, "198.51.100.8") as elsewhere:
        fine = await elsewhere.post("/api/auth/login", json={"username": OPERATOR, "password": OPERATOR_PASSWORD})
    assert [g.status_code for g in guesses] == [401] * 6 + [429]
    assert locked.status_code == 429 and "from this address" in locked.json()["detail"]
    assert fine.status_code == 200


async def enable_two_factor(client: httpx.AsyncClient) -> list[str]:
    """Two-factor on for the client's user; returns its backup codes."""
    enrollment = (await client.post("/api/auth/2fa/setup", json={"current_password": ADMIN_PASSWORD})).json()
    verified = await client.post("/api/auth/2fa/verify", json={"token": pyotp.TOTP(enrollment["secret"]).now()})
    assert verified.status_code == 200, verified.text
    return list(enrollment["backup_codes"])


async def test_a_right_password_awaiting_its_second_factor_is_no_failure(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    async with background(runtime, poll=False):
        backup_codes = await enable_two_factor(client)
    async with http(runtime, "127.0.0.10") as fresh:
        halfway = [await fresh.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
                   for _ in range(5)]  # fmt: skip
        done = await fresh.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD,
                                                         "totp_code": backup_codes[0]})  # fmt: skip
    assert [h.json()["error_code"] for h in halfway] == ["TOTP_REQUIRED"] * 5
    assert done.status_code == 200, done.text


async def test_wrong_second_factor_codes_lock_the_signed_in_account(
    runtime: Runtime, client: httpx.AsyncClient, admin_principal: Principal
) -> None:
    async with background(runtime, poll=False):
        await enable_two_factor(client)
    operator = await member(runtime, admin_principal)
    wrong = [await client.post("/api/auth/2fa/disable", json={"token": "000000"}) for _ in range(3)]
    forged = {"Authorization": f"Bearer {forged_token(operator.user_id)}"}
    async with http(runtime, "127.0.0.11", forged) as forger:
        naming_operator = [await forger.post("/api/auth/2fa/disable", json={"token": "000000"}) for _ in range(4)]
    async with http(runtime, "127.0.0.1") as same_address:
        admin = await same_address.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
        theirs = await same_address.post("/api/auth/login",
                                         json={"username": OPERATOR, "password": OPERATOR_PASSWORD})  # fmt: skip
    async with http(runtime, "127.0.0.12") as elsewhere:
        admin_elsewhere = await elsewhere.post("/api/auth/login",
                                               json={"username": ADMIN, "password": ADMIN_PASSWORD})  # fmt: skip
    assert [w.json()["error_code"] for w in wrong] == ["INVALID_TOTP_CODE"] * 3
    assert [n.json()["error_code"] for n in naming_operator] == ["TOKEN_INVALID"] * 4
    assert admin.status_code == 429 and "account" in admin.json()["detail"]
    assert theirs.status_code == 200
    assert admin_elsewhere.json()["error_code"] == "TOTP_REQUIRED"


async def parts(body: bytes, size: int = 7_000) -> AsyncIterator[bytes]:
    """The body sent chunked, in parts of `size` bytes."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def padded(body: dict[str, Any], size: int = 40_000) -> bytes:
    """`body` as JSON with `size` spaces of padding in it."""
    text = json.dumps(body)
    return (text[:1] + " " * size + text[1:]).encode()


async def test_a_sign_in_body_reaches_the_app_whole(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    """Bodies the limiter reads for the user name, in parts or whole, arrive unchanged (`admin` ran first-run
    setup, so the administrator can sign in)."""
    right = {"username": ADMIN, "password": ADMIN_PASSWORD}
    small = json.dumps(right).encode()
    as_json = {"Content-Type": "application/json"}
    async with background(runtime, poll=False), http(runtime, "127.0.0.13", as_json) as client:
        answers = [
            await client.post("/api/auth/login", content=small),
            await client.post("/api/auth/login", content=parts(small, 10)),
            await client.post("/api/auth/login", content=padded(right, 16_000)),
            await client.post("/api/auth/login", content=b'{"username": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"),
            await client.post("/api/auth/login", content=b"\xff\xfe not json"),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 400], [a.text[:200] for a in answers]


async def test_a_padded_sign_in_neither_bypasses_nor_escapes_the_lockout(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient]
) -> None:
    """A sign-in body over 16 KiB, whole or chunked, is refused unread; so the limiter always knows the account."""
    right, wrong = {"username": ADMIN, "password": ADMIN_PASSWORD}, {"username": ADMIN, "password": "a guess"}
    as_json = {"Content-Type": "application/json"}
    async with http(runtime, "127.0.0.14", as_json) as client:
        oversized = [
            await client.post("/api/auth/login", content=padded(wrong)),
            await client.post("/api/auth/login", content=parts(padded(wrong))),
            await client.post("/api/auth/login", content=padded(right)),
        ]
        guesses = [await client.post("/api/auth/login", content=padded(wrong, 10_000)) for _ in range(3)]
        locked = [
            await client.post("/api/auth/login", content=padded(right, 10_000)),
            await client.post("/api/auth/login", content=parts(padded(right, 10_000), 1_000)),
            await client.post("/api/auth/login", content=parts(padded(right))),
        ]
    assert [o.status_code for o in oversized] == [413] * 3, [o.text for o in oversized]
    assert oversized[0].json() == {"detail": "Request Entity Too Large", "status_code": 413,
                                   "error_code": "PAYLOAD_TOO_LARGE"}  # fmt: skip
    assert [g.json()["error_code"] for g in guesses] == ["INVALID_CREDENTIALS"] * 3
    # Locked whatever the body's size: the account from it, or too large to be read at all.
    assert [lock.status_code for lock in locked] == [429, 429, 413]


@pytest.mark.parametrize("path", ["/api/auth/refresh", "/api/auth/change-password", "/api/auth/2fa/verify"])
async def test_other_auth_bodies_over_16_kib_are_refused(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient], path: str
) -> None:
    headers = {"Content-Type": "application/json", **bearer(admin[0])}
    async with http(runtime, "127.0.0.15", headers) as client:
        whole = await client.post(path, content=padded({"token": "x"}))
        chunked = await client.post(path, content=parts(padded({"token": "x"})))
    assert (whole.status_code, chunked.status_code) == (413, 413)
    assert whole.json()["error_code"] == chunked.json()["error_code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_sign_in_not_sent_as_json_is_refused(
    runtime: Runtime, admin: tuple[SignedIn, httpx.AsyncClient], content_type: str | None
) -> None:
    """A browser sends text/plain and forms from any site without asking first: only JSON is taken."""
    body = json.dumps({"username": ADMIN, "password": ADMIN_PASSWORD}).encode()
    async with http(runtime, "127.0.0.16") as client:
        request = client.build_request("POST", "/api/auth/login", content=body)
        if content_type is not None:
            request.headers["Content-Type"] = content_type
        answer = await client.send(request)
    assert answer.status_code == 415, answer.text
    assert answer.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE" and "access_token" not in answer.text


async def test_wrong_current_passwords_count_as_failed_sign_ins(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    wrong = [await client.post("/api/auth/change-password", json={"current_password": "a guess",
                                                                  "new_password": "Another-long-passphrase-9"})
             for _ in range(3)]  # fmt: skip
    locked = await client.post("/api/auth/change-password", json={"current_password": ADMIN_PASSWORD,
                                                                   "new_password": "Another-long-passphrase-9"})
    async with http(runtime, "127.0.0.1") as same_address, http(runtime, "127.0.0.17") as elsewhere:
        sign_in_here = await same_address.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
        sign_in_there = await elsewhere.post("/api/auth/login", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert [w.json()["error_code"] for w in wrong] == ["WRONG_PASSWORD"] * 3
    assert remaining(wrong) == ["2", "1", "0"]
    assert locked.status_code == 429 and "account" in locked.json()["detail"]
    assert sign_in_here.status_code == 429
    assert sign_in_there.status_code == 200


# ---- without counters, and settings ----


async def test_without_its_counters_the_api_answers_unlimited(runtime: Runtime) -> None:
    runtime.rate_counters = PgRateCounters(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout=0.3)
    try:
        with capture_logs() as logs:
            async with http(runtime, "127.0.0.1") as client:
                answers = [await client.get(PUBLIC_PATH) for _ in range(5)]
    finally:
        await runtime.rate_counters.close()
    assert [a.status_code for a in answers] == [200] * 5
    assert all(limit_headers(a) is None for a in answers)
    assert [e["event"] for e in logs if e["event"].startswith("ratelimit.")] == ["ratelimit.counters_unavailable"]


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("100/minute", (Limit(100, 60),)),
        ("60/min, 10000/day", (Limit(60, 60), Limit(10_000, 86_400))),
        ("5/15min", (Limit(5, 900),)),
        ("off", ()),
        ("0", ()),
    ],
)
def test_limits_read_from_the_environment(text: str, limits: tuple[Limit, ...]) -> None:
    assert load_settings({"WATTLEDGER_RATE_LIMIT_KEY": text}).rate_limit_key == limits


@pytest.mark.parametrize("text", ["100", "100/fortnight", "0/minute", "-1/minute", "1/min,2/60s", "5/31days", "x/s"])
def test_a_malformed_limit_is_named_in_one_line(text: str) -> None:
    with pytest.raises(SettingsError, match=r"^invalid WATTLEDGER_RATE_LIMIT_LOGIN=[^\n]*$"):
        load_settings({"WATTLEDGER_RATE_LIMIT_LOGIN": text})


def test_the_seed_limits_are_the_defaults() -> None:
    settings = load_settings({})
    limits = settings.rate_limit_ip + settings.rate_limit_user + settings.rate_limit_key
    assert settings.rate_limits
    assert [limit.describe() for limit in limits] == [
        "100 per minute", "1000 per hour", "60 per minute", "10000 per day",
    ]  # fmt: skip
    assert [limit.describe() for limit in settings.rate_limit_login + settings.rate_limit_login_ip] == [
        "5 per 15 minutes", "20 per 15 minutes",
    ]  # fmt: skip
